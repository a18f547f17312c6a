"""The tiny Stable-Diffusion-format pipeline the latent-diffusion tests load (no hub access): a tiny
UNet2DConditionModel, AutoencoderKL and CLIPTextModel, and a CLIPTokenizer from vocab.json / merges.txt
written here. Used by tests/services/generator/models/latent_diffusion/test_loader.py and
tests/synthrad/cli/test_generate_model_path.py (the ``sd_folder`` fixture of tests/conftest.py)."""

from __future__ import annotations

import json

import torch


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _write_tokenizer_files(d) -> tuple[str, str, int]:
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    merges = ["e f", "ef f", "u s", "i o", "io n</w>", "p l", "pl e", "r a", "l a", "r g", "g e</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(d / "vocab.json"), str(d / "merges.txt"), len(vocab)


def build_tiny_sd(folder) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _, _, n_vocab = _write_tokenizer_files(folder.parent / "tokenizer-src")
    # from the folder holding vocab.json + merges.txt (works with transformers 4.x and 5.x alike)
    tok = CLIPTokenizer.from_pretrained(str(folder.parent / "tokenizer-src"), model_max_length=77)
    assert len(tok) == n_vocab
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
    with torch.no_grad():  # random init leaves cross-attention nearly silent; make the text matter visibly
        for name, prm in unet.named_parameters():
            if "attn2" in name and prm.ndim == 2:
                prm.normal_(0.0, 0.5)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    te = CLIPTextModel(CLIPTextConfig(
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=n_vocab,
        max_position_embeddings=77))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
