class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""
