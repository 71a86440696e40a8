"""The reconstruction model (supplementary A): frozen CLIP text tower → one linear projector → frozen causal LM.

The frozen tower encodes an AD; either its pooled [CLS] (EOT) vector or the per-token outputs of all its word tokens
go through ONE learnable linear projector into the LM's embedding space; the frozen LM reads
``[projected CLIP vector(s)][<BOS>]`` and is trained to continue with ``[AD][<EOS>]``. Only the projector learns:
:func:`check_only_projector_trainable` enforces it, :func:`save_projector` / :func:`load_projector` move it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from distinctad.common import atomic_path, atomic_write_json
from distinctad.train.core.config import ConfigError, from_dict
from distinctad.train.models.captioner_config import GenerationArgs
from distinctad.train.models.clip_ad import CLIPAD, WeightsNotFoundError, build_clip_ad, text_token_outputs
from distinctad.train.models.llm import build_llm, generate_settings, left_pad, load_tokenizer, special_ids
from distinctad.train.recon.config import RECON_DECODING, ReconModelArgs

IGNORE = -100
"""Label id that the cross-entropy ignores (PyTorch's default ``ignore_index``)."""
PROJECTOR_FILE = "projector.safetensors"
"""The projector's weights (fp32) inside a folder written by :func:`save_projector`."""
RECON_CONFIG_FILE = "recon.json"
"""What rebuilds the frozen parts around a saved projector (projector input, normalisation, model section)."""


class TrainableParametersError(RuntimeError):
    """Something other than the projector would be trained: the experiment would no longer measure CLIP."""


class ReconModel(nn.Module):
    """Frozen CLIP text tower → one linear projector → frozen causal LM.

    Args:
        clip: a :class:`CLIPAD` (its text tower, tokenizer and word mask are used; the vision tower is dropped).
        llm: a Hugging Face causal LM.
        tokenizer: the LM's tokenizer (bos / eos / pad ids).
        projector_input: ``"cls"`` or ``"words"``.
        normalize: L2-normalise the CLIP outputs before projecting them.
    """

    def __init__(
        self, clip: CLIPAD, llm: nn.Module, tokenizer, projector_input: str = "words", normalize: bool = False
    ):
        super().__init__()
        if projector_input not in ("cls", "words"):
            raise ValueError(f"projector_input must be 'cls' or 'words', got {projector_input!r}")
        # Only the text tower is used: the vision tower would be ~88M unused frozen weights (ViT-B/32) in memory
        # and in every checkpoint.
        clip.clip.visual = nn.Identity()
        self.clip = clip.requires_grad_(False)
        self.llm = llm.requires_grad_(False)
        self.projector_input = projector_input
        self.normalize = normalize
        proj = clip.clip.text_projection
        clip_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
        self.projector = nn.Linear(clip_dim, llm.get_input_embeddings().embedding_dim)
        self.bos_id, self.eos_id, self.pad_id = special_ids(tokenizer)
        self.train(self.training)

    def train(self, mode: bool = True) -> ReconModel:
        """Only the projector follows ``mode``: CLIP and the LM stay in eval mode (no dropout) for good."""
        super().train(mode)
        self.clip.eval()
        self.llm.eval()
        return self

    def tokenize_clip(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip token ids (B, ctx) of ``texts`` (CPU)."""
        return self.clip.tokenizer(list(texts))

    @torch.no_grad()
    def clip_features(self, clip_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen CLIP text outputs the projector sees.

        Returns:
            ``(feats (B, P, E), mask (B, P))``: P = 1 for ``cls`` (the pooled EOT vector); for ``words`` the
            per-token outputs of the word tokens (between SOT and EOT), P = the longest AD's last word position,
            ``mask`` False on non-words.
        """
        per_token, pooled = text_token_outputs(self.clip.clip, clip_tokens)  # (B, ctx, E), (B, E)
        if self.projector_input == "cls":
            feats = pooled[:, None]  # (B, 1, E)
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        else:
            mask = self.clip.word_mask(clip_tokens)  # (B, ctx)
            width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
            feats, mask = per_token[:, :width], mask[:, :width]  # (B, P, E), (B, P)
        if self.normalize:
            feats = F.normalize(feats, dim=-1)
        return feats, mask

    def prefix(self, clip_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected CLIP vectors in the LM's embedding space: ``(prefix (B, P, H), mask (B, P))``."""
        feats, mask = self.clip_features(clip_tokens)
        prefix = self.projector(feats.to(self.projector.weight.dtype))  # (B, P, H)
        return prefix.to(self.llm.get_input_embeddings().weight.dtype), mask

    def forward(
        self, clip_tokens: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, text_labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Next-token loss on the AD given ``[prefix][<BOS>]``.

        Args:
            clip_tokens: (B, ctx) open_clip ids of the ADs.
            text_ids: (B, S) LM ids ``<BOS> AD <EOS>``, right-padded; text_mask (B, S) bool.
            text_labels: (B, S) ``text_ids`` with IGNORE on <BOS> and padding.

        Returns:
            dict(loss (with gradient), num_tokens (AD tokens in the loss), prefix_len (mean projector tokens)).
        """
        prefix, prefix_mask = self.prefix(clip_tokens)  # (B, P, H), (B, P)
        text_emb = self.llm.get_input_embeddings()(text_ids)  # (B, S, H)
        text_mask = text_mask.bool()
        # Each row is [its own prefix tokens][its text], right-padded: no gap between the two, so positions run
        # 0.. as in generation (where left padding is handled by the attention-mask-derived position ids).
        rows, labels = [], []
        for b in range(len(text_ids)):
            p = prefix[b][prefix_mask[b]]  # (P_b, H)
            rows.append(torch.cat([p, text_emb[b][text_mask[b]]]))  # (P_b + S_b, H)
            labels.append(torch.cat([text_labels.new_full((len(p),), IGNORE), text_labels[b][text_mask[b]]]))
        lengths = torch.tensor([len(r) for r in rows], device=text_ids.device)
        inputs = pad_sequence(rows, batch_first=True)  # (B, L, H)
        attn = (torch.arange(inputs.shape[1], device=text_ids.device)[None] < lengths[:, None]).long()  # (B, L)
        labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE)  # (B, L)
        # The LM head runs on the AD positions only: (B, L, vocab) logits of GPT-2 would be ~0.4 GB per 32 ADs.
        out = self.llm(
            inputs_embeds=inputs, attention_mask=attn, output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
        hidden = out.hidden_states[-1]  # (B, L, H), after the final norm
        target = labels[:, 1:]  # position t predicts token t+1
        sel = target != IGNORE
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][sel])  # (n_tok, vocab)
        loss = F.cross_entropy(logits.float(), target[sel])
        return {
            "loss": loss,
            "num_tokens": sel.sum().detach(),
            "prefix_len": prefix_mask.sum(1).float().mean().detach(),
        }

    @torch.no_grad()
    def generate_ids(
        self,
        clip_tokens: torch.Tensor,
        gen: GenerationArgs | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Reconstructed token ids (B, new tokens): the LM continues ``[prefix][<BOS>]`` (left-padded).

        Decoding follows ``gen`` (default: recon's :data:`~distinctad.train.recon.config.RECON_DECODING`); keyword
        arguments override single HF ``generate`` settings.
        """
        prefix, prefix_mask = self.prefix(clip_tokens)  # (B, P, H)
        embed = self.llm.get_input_embeddings()
        bos = embed(torch.tensor([self.bos_id], device=prefix.device))  # (1, H)
        rows = [torch.cat([prefix[b][prefix_mask[b]], bos]) for b in range(len(prefix))]
        inputs, attn = left_pad(rows)  # (B, L, H), (B, L)
        decoding = (gen or GenerationArgs(**RECON_DECODING)).decoding()
        kwargs = generate_settings(decoding, self.pad_id, self.eos_id, self.bos_id)
        kwargs.update(generate_kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Passing `\w+` with `inputs_embeds`")
            return self.llm.generate(inputs_embeds=inputs, attention_mask=attn, **kwargs)

    def reconstruct(self, texts: Sequence[str], tokenizer, **gen_kwargs: Any) -> list[str]:
        """The LM's reconstruction of each AD in ``texts`` from its CLIP text embedding (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            device = self.projector.weight.device
            ids = self.generate_ids(self.tokenize_clip(texts).to(device), **gen_kwargs)
        finally:
            self.train(was_training)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def check_only_projector_trainable(model: ReconModel) -> int:
    """Raise :class:`TrainableParametersError` unless exactly the projector's parameters require grad.

    Returns:
        The number of trainable parameters.
    """
    wrong = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    if wrong:
        raise TrainableParametersError(
            f"only the projector may train, but {len(wrong)} other parameter(s) require grad (e.g. '{wrong[0]}'): "
            "the CLIP text tower and the LM must stay frozen"
        )
    frozen_proj = [n for n, p in model.projector.named_parameters() if not p.requires_grad]
    if frozen_proj:
        raise TrainableParametersError(f"the projector's '{frozen_proj[0]}' does not require grad")
    return sum(p.numel() for p in model.projector.parameters())


def collate(texts: Sequence[str], model: ReconModel, tokenizer, max_ad_tokens: int = 64) -> dict[str, torch.Tensor]:
    """A training batch of the B ADs in ``texts``: the keyword arguments of :meth:`ReconModel.forward`.

    Returns:
        dict(clip_tokens (B, ctx) open_clip ids, text_ids (B, S) LM ids ``<BOS> AD <EOS>`` right-padded (the AD cut
        to ``max_ad_tokens``), text_mask (B, S) bool, text_labels (B, S) with IGNORE on <BOS> and padding).
    """
    bos, eos, pad = model.bos_id, model.eos_id, model.pad_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [[bos] + x[:max_ad_tokens] + [eos] for x in ids]
    S = max(len(r) for r in rows)
    text_ids = torch.full((len(rows), S), pad, dtype=torch.long)
    text_mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for b, r in enumerate(rows):
        text_ids[b, : len(r)] = torch.tensor(r)
        text_mask[b, : len(r)] = True
    text_labels = text_ids.masked_fill(~text_mask, IGNORE)
    text_labels[:, 0] = IGNORE  # <BOS> is given, not predicted
    return dict(clip_tokens=model.tokenize_clip(texts), text_ids=text_ids, text_mask=text_mask, text_labels=text_labels)


def build_recon_model(m: ReconModelArgs, tokenizer) -> ReconModel:
    """The :class:`ReconModel` of a (resolved) model section: weights from local paths only."""
    try:
        clip = build_clip_ad(
            m.clip_model,
            m.clip_pretrained or None,
            skip_punctuation=m.skip_punctuation,
            cache_dir=m.clip_cache_dir or None,
        )
        llm = build_llm(m.llm, tokenizer)
    except (WeightsNotFoundError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model: {str(e).splitlines()[0]}") from None
    return ReconModel(clip, llm, tokenizer, m.projector_input, m.normalize)


def save_projector(model: ReconModel, out_dir: str | Path, model_args: ReconModelArgs | None = None) -> Path:
    """Write the projector (safetensors, fp32) and what rebuilds the rest (``recon.json``) into ``out_dir``.

    Returns:
        The folder, loadable with :func:`load_projector` (the CLIP and LM paths in ``recon.json`` must exist).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    with atomic_path(out_dir / PROJECTOR_FILE) as tmp:
        safetensors.torch.save_file(state, str(tmp))
    meta = {"projector_input": model.projector_input, "normalize": model.normalize}
    if model_args is not None:
        meta["model"] = asdict(model_args)
    atomic_write_json(out_dir / RECON_CONFIG_FILE, meta)
    return out_dir


def load_projector(path: str | Path, model: ReconModel | None = None) -> tuple[ReconModel, Any]:
    """Load a projector saved by :func:`save_projector`.

    Args:
        path: the folder.
        model: a model to load the weights into; None builds it from ``recon.json`` (CLIP + LM from their paths).

    Returns:
        ``(model, tokenizer)``; tokenizer is None when ``model`` was given.
    """
    path = Path(path)
    if not (path / PROJECTOR_FILE).is_file():
        raise FileNotFoundError(f"no {PROJECTOR_FILE} in {path}")
    meta = json.loads((path / RECON_CONFIG_FILE).read_text())
    tokenizer = None
    if model is None:
        if "model" not in meta:
            raise ValueError(f"{path / RECON_CONFIG_FILE} has no model section: pass the model to load into")
        m = from_dict(ReconModelArgs, meta["model"])
        tokenizer = load_tokenizer(m.tokenizer or m.llm)
        model = build_recon_model(m, tokenizer)
    elif model.projector_input != meta["projector_input"]:
        raise ValueError(
            f"projector of {path} was trained on '{meta['projector_input']}', the model uses '{model.projector_input}'"
        )
    state = safetensors.torch.load_file(str(path / PROJECTOR_FILE))
    ref = model.projector.weight
    model.projector.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in state.items()})
    return model, tokenizer
