"""CLIP-AD: an open_clip model whose vision tower is adapted to movie frames against a frozen text tower.

Stage-I (DESIGN §4) fine-tunes the CLIP vision tower on (clip frames, AD) pairs while the text tower, its
projection, the token/positional embeddings and ``ln_final`` stay frozen, so the adapted image features remain in
the text space that Stage-II and the AD reconstruction experiment (issue 8) rely on.

Weights never come from the network. ``pretrained`` is one of:

- a checkpoint file (``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` / any open_clip state dict);
  OpenAI-trained weights given as a file need the "-quickgelu" architecture (e.g. "ViT-B-32-quickgelu"), which the
  tag path below sets by itself;
- a folder: with ``open_clip_config.json`` (what :func:`save_clip` writes) it is loaded through open_clip's
  ``local-dir:`` schema, otherwise the standard checkpoint names are looked up inside it;
- an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...) that is already in the local Hugging Face
  hub cache or open_clip's ``~/.cache/clip``;
- ``None``: random initialisation (tests, SynthMAD, throughput benchmarks).

Anything else raises :class:`WeightsNotFoundError` with one line saying where to put the file.

Word tokens: a "word" is one BPE token of open_clip's tokenizer, as-is (sub-words of a long word are separate
"words"); SOT, EOT and padding are excluded, and by default so are pure-punctuation tokens (".", ",", ...), which
occur in almost every AD and would only add easy, uninformative MIL positives.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.transformer import text_global_pool
from torch import nn

from distinctad.common import atomic_path
from distinctad.train.models.clip_names import DEFAULT_MODEL, TINY_MODEL

logger = logging.getLogger(__name__)


_CONFIG_DIR = Path(__file__).parent / "model_configs"
# Checkpoint names open_clip itself writes or downloads, most preferred first.
_CHECKPOINT_NAMES = (
    HF_SAFE_WEIGHTS_NAME,
    "open_clip_pytorch_model.safetensors",
    HF_WEIGHTS_NAME,
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


def register_model_configs() -> None:
    """Register the shipped model configs (the tiny one) with open_clip, once per process."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


register_model_configs()


class WeightsNotFoundError(FileNotFoundError):
    """The requested CLIP weights are not on this machine (nothing is ever downloaded)."""


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving


def _hub_cached_file(hf_hub: str, cache_dir: str | None) -> str | None:
    """Path of an open_clip ``hf_hub`` entry ("org/repo/" or "org/repo/file") in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    # open_clip's convention: "org/repo/" means the default file names, "org/repo/file.pt" names the file.
    repo_id, filename = os.path.split(hf_hub)
    if filename:
        candidates = [os.path.splitext(filename)[0] + ".safetensors", filename]
    else:
        candidates = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    for name in candidates:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Turn ``pretrained`` (file, folder or cached tag) into a local file path, without any download.

    Returns:
        ``(path, tag_cfg)``: ``path`` is a checkpoint file, or ``"local-dir:<folder>"`` for a folder holding
        ``open_clip_config.json``; ``tag_cfg`` is open_clip's pretrained config when ``pretrained`` was a tag (its
        ``quick_gelu`` and preprocessing must be applied to the model), else ``{}``.

    Raises:
        WeightsNotFoundError: with a one-line message naming where to place the weights.
    """
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        return str(path), {}
    if path.is_dir():
        weights = [path / name for name in _CHECKPOINT_NAMES if (path / name).is_file()]
        if weights and (path / HF_CONFIG_NAME).is_file():
            return f"local-dir:{path}", {}
        if weights:
            return str(weights[0]), {}
        raise WeightsNotFoundError(
            f"no CLIP checkpoint in {path}: place open_clip_pytorch_model.bin or open_clip_model.safetensors there"
        )
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_cfg:
        found = None
        if tag_cfg.get("hf_hub"):
            found = _hub_cached_file(tag_cfg["hf_hub"], cache_dir)
        if found is None and tag_cfg.get("url"):
            candidate = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(tag_cfg["url"])
            found = str(candidate) if candidate.is_file() else None
        if found is not None:
            return found, tag_cfg
        source = f"hf.co/{tag_cfg['hf_hub'].rstrip('/')}" if tag_cfg.get("hf_hub") else tag_cfg.get("url", "?")
        raise WeightsNotFoundError(
            f"CLIP weights {model_name}/{pretrained} are not on this machine (no downloads): get "
            f"open_clip_pytorch_model.bin from {source} and pass pretrained=/path/to/open_clip_pytorch_model.bin "
            "(or put it in the Hugging Face hub cache)"
        )
    raise WeightsNotFoundError(
        f"CLIP weights not found at {pretrained}: place open_clip_pytorch_model.bin (or open_clip_model.safetensors) "
        f"for {model_name} there, or pass an open_clip tag already in the local cache"
    )


def create_clip(
    model_name: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    image_size: int | None = None,
) -> nn.Module:
    """Create a plain open_clip model from local weights only (see the module docstring for ``pretrained``).

    Args:
        model_name: open_clip architecture ("ViT-B-32", "ViT-B-16", "distinctad-tiny", ...); ignored when
            ``pretrained`` is a folder with its own ``open_clip_config.json``.
        pretrained: checkpoint file, folder, cached tag, or None for random initialisation.
        cache_dir: Hugging Face / open_clip cache folder to look tags up in (default: the standard caches).
        device: where the model is put.
        precision: open_clip precision ("fp32", "bf16", "amp", ...).
        image_size: override the vision tower's input size (position embeddings are resized when loading).
    """
    register_model_configs()
    path, tag_cfg = resolve_pretrained(model_name, pretrained, cache_dir) if pretrained is not None else ("", {})
    if not path.startswith("local-dir:") and model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. {DEFAULT_MODEL}, ViT-B-16, {TINY_MODEL}")
    kwargs: dict = dict(device=device, precision=precision, force_image_size=image_size)
    if pretrained is None:
        logger.info("creating %s with random weights (no pretrained given)", model_name)
        return open_clip.create_model(model_name, pretrained=None, **kwargs)
    if tag_cfg:
        # What open_clip's tag path would apply: activation of the original training and its preprocessing.
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {
            k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
        }
    if path.startswith("local-dir:"):
        model = open_clip.create_model(path, **kwargs)
    else:
        model = open_clip.create_model(model_name, pretrained=path, **kwargs)
    logger.info("loaded %s weights from %s", model_name, path)
    return model


def save_clip(model: nn.Module, out_dir: str | os.PathLike, model_name: str, safetensors: bool = True) -> Path:
    """Save an open_clip model (or a :class:`CLIPAD`'s ``.clip``) as a folder open_clip loads back.

    The folder holds ``open_clip_config.json`` (architecture + preprocessing, as open_clip's hub export writes it)
    and ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``), so it can be given to
    :func:`create_clip` / :func:`build_clip_ad` either as the folder or as the weights file.

    Returns:
        Path of the weights file.
    """
    model = model.clip if isinstance(model, CLIPAD) else model
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r}")
    # The architecture as built, e.g. with an overridden image size.
    model_cfg["vision_cfg"]["image_size"] = model.visual.image_size
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HF_CONFIG_NAME) as tmp:
        save_config_for_hf(model, tmp, model_config=model_cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / (HF_SAFE_WEIGHTS_NAME if safetensors else HF_WEIGHTS_NAME)
    with atomic_path(weights) as tmp:
        if safetensors:
            import safetensors.torch

            safetensors.torch.save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return weights


# ----------------------------------------------------------------------------------------------------------------
# Per-token text outputs


def _check_text_tower(model: nn.Module) -> None:
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(f"per-token text outputs need an open_clip.CLIP (built-in text tower), got {type(model)}")


def text_token_outputs(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's output of an open_clip text tower, after ``ln_final`` and the text projection.

    This is ``model.encode_text`` without the pooling step: the pooled vector is the same row of the per-token
    output that ``encode_text`` picks (the EOT token for CLIP, its "[CLS]"), so ``pooled == encode_text(tokens)``.

    Args:
        model: an ``open_clip.CLIP``.
        tokens: (B, ctx) token ids from the model's tokenizer.

    Returns:
        ``(per_token (B, ctx, E), pooled (B, E))``, both unnormalised.
    """
    _check_text_tower(model)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, ctx, W)
    x = x + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)  # (B, ctx, W)
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (B, ctx, E)
    pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return x, pooled


# ----------------------------------------------------------------------------------------------------------------
# CLIP-AD


def pool_video(frame_emb: torch.Tensor) -> torch.Tensor:
    """Video embedding: mean of the (normalised) frame embeddings (B, T, E), re-normalised -> (B, E)."""
    return F.normalize(frame_emb.mean(dim=1), dim=-1)


class CLIPAD(nn.Module):
    """An open_clip CLIP with a frozen text tower and a (partly) trainable vision tower.

    Args:
        clip: an ``open_clip.CLIP`` (from :func:`create_clip`).
        tokenizer: the model's open_clip tokenizer (``open_clip.get_tokenizer(model_name)``).
        trainable_vision_blocks: None trains the whole vision tower; k trains only its last k transformer blocks
            plus ``ln_post`` and ``proj`` (open_clip's ``VisionTransformer.lock``).
        skip_punctuation: leave pure-punctuation BPE tokens out of the word mask.
        max_logit_scale: the exp'd logit scale is clamped to this (open_clip clamps at 100 after each step; here the
            clamp is in the forward so no training loop has to remember it).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        trainable_vision_blocks: int | None = None,
        skip_punctuation: bool = True,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        _check_text_tower(clip)
        self.clip = clip
        self.tokenizer = tokenizer
        self.skip_punctuation = skip_punctuation
        self.max_logit_scale = max_logit_scale
        clip.lock_text_tower(unlocked_layers=0)  # token/pos embeddings, transformer, ln_final, text_projection
        if trainable_vision_blocks is not None:
            n_blocks = len(clip.visual.transformer.resblocks)
            if not 0 <= trainable_vision_blocks <= n_blocks:
                raise ValueError(f"trainable_vision_blocks must be in [0, {n_blocks}], got {trainable_vision_blocks}")
            # open_clip groups: [stem], blocks[:-1]..., [last block, ln_post], proj -> k blocks = k + 1 groups.
            clip.visual.lock(unlocked_groups=trainable_vision_blocks + 1)
            clip.visual.ln_post.requires_grad_(True)
        self._punct_ids: torch.Tensor | None = None
        self.train(self.training)

    # Modules of the frozen text tower, kept in eval mode (no dropout) whatever mode the model is in.
    def text_modules(self) -> list[nn.Module]:
        """The frozen text-tower modules (transformer, token_embedding, ln_final)."""
        return [self.clip.transformer, self.clip.token_embedding, self.clip.ln_final]

    def train(self, mode: bool = True) -> CLIPAD:
        super().train(mode)
        for m in self.text_modules():
            m.eval()
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of the learnable logit scale, clamped to ``max_logit_scale`` (differentiable below the clamp)."""
        return self.clip.logit_scale.exp().clamp(max=self.max_logit_scale)

    def tokenize(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Token ids (B, ctx) on the model's device; tensors are passed through."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenizer(list(texts))
        return tokens.to(self.clip.logit_scale.device)

    def encode_video(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised frame embeddings (B, T, E) of preprocessed frames ``images`` (B, T, 3, H, W)."""
        B, T = images.shape[:2]
        x = self.clip.encode_image(images.flatten(0, 1), normalize=True)  # (B*T, E)
        return x.view(B, T, -1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Normalised text ([CLS]/EOT) embeddings (B, E) of the frozen text tower."""
        return F.normalize(self.clip.encode_text(self.tokenize(texts)), dim=-1)

    def _punctuation_ids(self, device: torch.device) -> torch.Tensor:
        if self._punct_ids is None:
            encoder = getattr(self.tokenizer, "encoder", {})
            ids = [
                i
                for tok, i in encoder.items()
                if (w := tok.replace("</w>", "")) and all(c in string.punctuation for c in w)
            ]
            self._punct_ids = torch.tensor(sorted(ids), dtype=torch.long)
        return self._punct_ids.to(device)

    def word_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """True where a token of ``tokens`` (B, ctx) is a word: between SOT and EOT, not padding."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        eot_id = getattr(self.tokenizer, "eot_token_id", None)
        eot_pos = (tokens == eot_id).int().argmax(dim=-1) if eot_id is not None else tokens.argmax(dim=-1)
        # Position-based: padding is id 0, which is also the id of "!" in CLIP's vocabulary.
        mask = (pos[None] >= 1) & (pos[None] < eot_pos[:, None])  # (B, ctx)
        if self.skip_punctuation:
            mask &= ~torch.isin(tokens, self._punctuation_ids(tokens.device))
        return mask

    @torch.no_grad()
    def encode_text_and_words(self, texts: Sequence[str] | torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass of the frozen text tower giving both the AD embedding and its word embeddings.

        Returns:
            dict(text_emb (B, E), word_emb (B, W, E), word_mask (B, W)), embeddings normalised; W is the longest
            AD's number of tokens between SOT and EOT in this batch (masked entries are not words).
        """
        tokens = self.tokenize(texts)
        per_token, pooled = text_token_outputs(self.clip, tokens)  # (B, ctx, E), (B, E)
        mask = self.word_mask(tokens)  # (B, ctx)
        width = max(int(mask.any(0).nonzero().max()) if mask.any() else 0, 1)  # last column holding a word
        return dict(
            text_emb=F.normalize(pooled, dim=-1),
            word_emb=F.normalize(per_token[:, 1 : width + 1], dim=-1),  # (B, W, E)
            word_mask=mask[:, 1 : width + 1],  # (B, W)
        )

    def encode_words(self, texts: Sequence[str] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised per-word embeddings (B, W, E) of the frozen text tower and the word mask (B, W)."""
        out = self.encode_text_and_words(texts)
        return out["word_emb"], out["word_mask"]

    def forward(self, images: torch.Tensor, texts: Sequence[str] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the Stage-I loss needs for a batch of clips (B, T, 3, H, W) and their ADs.

        Returns:
            dict(frame_emb (B, T, E), text_emb (B, E), word_emb (B, W, E), word_mask (B, W), logit_scale ()),
            ready for ``Stage1Loss(**out)``.
        """
        out = self.encode_text_and_words(texts)
        out["frame_emb"] = self.encode_video(images)
        out["logit_scale"] = self.logit_scale
        return out


def build_clip_ad(
    model_name: str = DEFAULT_MODEL,
    pretrained: str | None = None,
    *,
    trainable_vision_blocks: int | None = None,
    skip_punctuation: bool = True,
    grad_checkpointing: bool = False,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    image_size: int | None = None,
) -> CLIPAD:
    """Build the Stage-I model: open_clip weights from a local source, frozen text tower, trainable vision tower.

    Args:
        model_name: "ViT-B-32" (default), "ViT-B-16", "distinctad-tiny" or any open_clip CLIP architecture.
        pretrained: see the module docstring; None = random init.
        trainable_vision_blocks: None = whole vision tower; k = last k blocks + ln_post + proj.
        skip_punctuation: leave punctuation tokens out of the MIL words.
        grad_checkpointing: activation checkpointing in the vision transformer (memory for speed).
        cache_dir, device, precision, image_size: as in :func:`create_clip`.
    """
    clip = create_clip(
        model_name, pretrained, cache_dir=cache_dir, device=device, precision=precision, image_size=image_size
    )
    if grad_checkpointing:
        clip.visual.set_grad_checkpointing(True)
    tokenizer_name = model_name
    if pretrained is not None and (Path(pretrained) / HF_CONFIG_NAME).is_file():
        tokenizer_name = f"local-dir:{pretrained}"
    tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=clip.context_length)
    return CLIPAD(clip, tokenizer, trainable_vision_blocks=trainable_vision_blocks, skip_punctuation=skip_punctuation)


def clip_transforms(model: CLIPAD | nn.Module, aug_cfg: dict | open_clip.AugmentationCfg | None = None):
    """open_clip's (train, eval) image transforms for ``model``'s input size and normalisation.

    Applied per PIL frame by the data pipeline. The train transform is open_clip's RandomResizedCrop
    (+ ``aug_cfg`` extras); its random crop is drawn per frame, not per clip.
    """
    clip = model.clip if isinstance(model, CLIPAD) else model
    pp = open_clip.get_model_preprocess_cfg(clip)
    common = dict(
        mean=pp.get("mean"), std=pp.get("std"), interpolation=pp.get("interpolation"), resize_mode=pp.get("resize_mode")
    )
    train = open_clip.image_transform(pp["size"], is_train=True, aug_cfg=aug_cfg, **common)
    val = open_clip.image_transform(pp["size"], is_train=False, **common)
    return train, val
