"""The language model of Stage-II: loading (local only), tiny random configs, freezing, LoRA, a BPE tokenizer.

Real weights come from a local Hugging Face directory (GPT-2 124M by default, LLaMA-3-8B by path) or the
local hub cache; nothing is ever downloaded. Tests and SynthMAD runs use ``"tiny-gpt2"`` / ``"tiny-llama"``:
2-layer, 64-wide random models whose vocabulary is that of a tokenizer trained on the fly with
``train_bpe_tokenizer``. ``save_llm`` / ``build_llm(path)`` go through save_pretrained / from_pretrained, the
same code path as real weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from distinctad.common import warn_once

logger = logging.getLogger(__name__)
TINY_LLMS = ("tiny-gpt2", "tiny-llama")
BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"

# LoRA targets per model family: attention projections (GPT-2 fuses q/k/v into one Conv1D, c_attn).
LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) offline and save it.

    Args:
        texts: training text, e.g. the AD sentences.
        vocab_size: target vocabulary size, special tokens included (byte-level BPE needs at least 256 + 3).
        out_dir: where to save; ``AutoTokenizer.from_pretrained(out_dir)`` loads it back.

    Returns:
        The tokenizer, with bos / eos / pad tokens set (``<|bos|>``, ``<|endoftext|>``, ``<|pad|>``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable, no unknown token needed
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(out_dir))
    return fast


def resolve_local(name_or_path: str | os.PathLike, what: str = "LLM") -> str:
    """A local directory for ``name_or_path``: the directory itself, or the hub-cache snapshot of a model id.

    Never touches the network (from_pretrained on a bare id would still probe the hub for adapter files).

    Raises:
        FileNotFoundError: one line, when neither exists.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if not (path.is_absolute() or name.startswith((".", "~"))) and name.count("/") <= 1:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(name, local_files_only=True)
        except Exception:  # LocalEntryNotFoundError, HFValidationError: both mean "not here"
            pass
    raise FileNotFoundError(
        f"{what} '{name}' is neither a local directory nor in the Hugging Face cache "
        "(no downloads are made; pass a local path, or 'tiny-gpt2' / 'tiny-llama' for tests)"
    )


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad); a tokenizer without bos uses eos as the "AD starts here" marker, without pad uses eos
    (GPT-2's only special token, <|endoftext|>, then plays all three roles)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; the AD needs an end marker")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load a tokenizer from a local directory (or the local hub cache); never downloads.

    A tokenizer without a pad token (GPT-2) gets pad = eos: padded positions are masked anyway.
    """
    path = resolve_local(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no usable tokenizer in {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_llm_config(name: str, tokenizer):
    """The 2-layer, 64-wide random configs used by tests ("tiny-gpt2", "tiny-llama")."""
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if name == "tiny-gpt2":
        # No dropout: tests compare outputs bit for bit and train on a fixed batch.
        return GPT2Config(
            n_layer=2, n_embd=64, n_head=2, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids
        )
    if name == "tiny-llama":
        return LlamaConfig(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **ids,
        )
    raise ValueError(f"unknown tiny LLM '{name}', expected one of {TINY_LLMS}")


def build_llm(
    name_or_path: str | os.PathLike,
    tokenizer=None,
    *,
    freeze: bool = False,
    dtype: torch.dtype | str | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Build the causal LM.

    Args:
        name_or_path: a local HF directory, a model id already in the local hub cache, or "tiny-gpt2" /
            "tiny-llama" (random weights; needs ``tokenizer`` for the vocabulary and special ids).
        tokenizer: the tokenizer the model is used with; for loaded models a larger tokenizer resizes the
            embeddings.
        freeze: set requires_grad=False on every weight (the base of a LoRA model is frozen by peft anyway).
        dtype: weight dtype, e.g. torch.bfloat16 or "bfloat16" (default: float32 / as saved).
        gradient_checkpointing: recompute activations in the backward pass (LLaMA-8B).
        attn_implementation: HF attention kernel, 'sdpa', 'flash_attention_2' or 'eager' (:func:`attention_kernel`
            falls back to 'sdpa' where flash attention cannot run).

    Returns:
        A ``transformers`` causal LM.
    """
    name_or_path = str(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    attn = attention_kernel(attn_implementation)
    if name_or_path in TINY_LLMS:
        if tokenizer is None:
            raise ValueError(f"'{name_or_path}' needs a tokenizer to size its vocabulary")
        model = AutoModelForCausalLM.from_config(tiny_llm_config(name_or_path, tokenizer), attn_implementation=attn)
        if dtype is not None:
            model = model.to(dtype)
    else:
        path = resolve_local(name_or_path, "LLM")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation=attn
            )
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"no loadable causal LM in {path}: {str(e).splitlines()[0]}") from None
        if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if freeze:
        model.requires_grad_(False)
    return model


def attention_kernel(requested: str) -> str:
    """The HF ``attn_implementation`` to use: ``requested``, except 'flash_attention_2' without CUDA or without the
    flash-attn package, which falls back to 'sdpa' with a one-line notice."""
    if requested != "flash_attention_2":
        return requested
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return requested
    why = "no CUDA device" if not torch.cuda.is_available() else "the flash-attn package is not installed"
    warn_once(logger, f"model.attn_implementation=flash_attention_2: {why}; using sdpa (PyTorch's attention kernels)")
    return "sdpa"


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft): the base is frozen, only the adapters train.

    Args:
        model: a causal LM from ``build_llm``.
        r: LoRA rank.
        alpha: LoRA scaling numerator (scale = alpha / r).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt (default per family, ``LORA_TARGETS``).

    Returns:
        The ``peft.PeftModel``.
    """
    from peft import LoraConfig, get_peft_model

    family = model.config.model_type
    if target_modules is None:
        if family not in LORA_TARGETS:
            raise ValueError(f"no default LoRA targets for model type '{family}'; set lora_targets")
        target_modules = LORA_TARGETS[family]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights transposed
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_llm(model: PreTrainedModel, tokenizer, out_dir: str | os.PathLike) -> Path:
    """``save_pretrained`` model and tokenizer into ``out_dir``; written to a sibling temp dir, then renamed.

    Returns:
        ``out_dir`` as a Path, loadable with ``build_llm(out_dir)`` and ``load_tokenizer(out_dir)``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def left_pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows of input embeddings for generation, left-padded so every row ends where generation starts.

    Args:
        rows: B tensors of shape (len_b, E), same dtype and device.

    Returns:
        ``(inputs_embeds (B, L, E), attention_mask (B, L))`` with L = max len_b; padding is zeros, mask 0.
    """
    L = max(r.shape[0] for r in rows)
    inputs = rows[0].new_zeros(len(rows), L, rows[0].shape[-1])
    attn = torch.zeros(len(rows), L, dtype=torch.long, device=rows[0].device)
    for b, r in enumerate(rows):
        inputs[b, L - r.shape[0] :] = r
        attn[b, L - r.shape[0] :] = 1
    return inputs, attn


def generate_settings(decoding: dict[str, Any], pad_id: int, eos_id: int, bos_id: int) -> dict[str, Any]:
    """HF ``generate`` keyword arguments: ``decoding`` (``GenerationArgs.decoding()``) plus what every DistinctAD LM
    call needs: at least one new token (no empty AD), deterministic decoding, and the tokenizer's special ids."""
    return dict(
        **decoding, min_new_tokens=1, do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=bos_id
    )


GPT2_VOCAB = 50257  # GPT-2's byte-level BPE vocabulary (Radford et al. 2019)


def random_gpt2_124m(tokenizer):
    """GPT-2 124M's shape (``GPT2Config()`` defaults: 12 layers, 768 wide, 12 heads) with random weights and
    ``tokenizer``'s special tokens: for benchmarks that time the paper's model shape offline.

    The vocabulary is GPT-2's 50257 rows (or the tokenizer's size if larger), whatever the tokenizer: the tied LM
    head, 38.6M of the 124M parameters, then costs per token what GPT-2's does (the logits over the whole vocabulary
    that the captioning and distinctive-word losses take). Ids beyond the tokenizer's never occur in the input.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=max(len(tokenizer), GPT2_VOCAB),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
