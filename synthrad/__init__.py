"""synthrad: serve synthetic chest X-rays and score them."""
__version__ = "0.1.0"
