"""A stand-in for pre-trained GPT-2 where no weights can be had: a tiny LM pre-trained on the training ADs.

:func:`pretrain_lm` packs the ADs GPT-2 style and, with ``repeat`` > 0, adds *copy rows* that teach the tiny LM to
copy from its context, as web-pretrained LMs can. The recon job calls it once, before the LM is frozen
(``model.pretrain_steps``), and saves the result to ``<run dir>/lm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from distinctad.train.core.engine import warmup_cosine
from distinctad.train.models.llm import special_ids
from distinctad.train.recon.model import IGNORE


def copy_rows(
    encoded: Sequence[list[int]], n: int, max_tokens: int, special: tuple[int, int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` copy rows ``[y] <BOS> [y] <EOS>``, each ``y`` a random AD of ``encoded`` cut to ``max_tokens`` tokens
    and shuffled.

    Args:
        encoded: the training ADs as LM token ids (none empty).
        n: rows to draw.
        max_tokens: the longest ``y``.
        special: ``(bos, eos, pad)`` ids (:func:`~distinctad.train.models.llm.special_ids`).
        generator: draws the ADs and their orders.

    Returns:
        ``(ids (n, L), attention mask (n, L), labels (n, L))``, right-padded; the labels are IGNORE except on the
        second ``y`` and <EOS>, which only copying the first ``y`` can predict.
    """
    bos, eos, pad = special
    rows, labels = [], []
    for i in torch.randint(len(encoded), (n,), generator=generator).tolist():
        x = encoded[i][:max_tokens]
        y = [x[j] for j in torch.randperm(len(x), generator=generator).tolist()]
        rows.append(torch.tensor([*y, bos, *y, eos]))
        labels.append(torch.tensor([IGNORE] * (len(y) + 1) + [*y, eos]))
    return (
        pad_sequence(rows, batch_first=True, padding_value=pad),
        pad_sequence([torch.ones_like(r) for r in rows], batch_first=True),
        pad_sequence(labels, batch_first=True, padding_value=IGNORE),
    )


def pretrain_lm(
    texts: Sequence[str],
    tokenizer,
    model: nn.Module,
    *,
    steps: int,
    batch_size: int = 32,
    block_size: int = 128,
    lr: float = 3e-3,
    repeat: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Pre-train a causal LM on the ``<BOS> text <EOS>`` stream of ``texts``, packed into blocks, in place.

    A stand-in for pre-trained GPT-2 where no weights can be had: a tiny LM that has learned the language of ADs.
    The sentences are packed back to back (GPT-2 style) rather than one per row, so every position up to
    ``block_size`` is trained and the LM learns to continue after context: the reconstruction prompt puts the
    projected CLIP tokens before ``<BOS>``, which an LM trained only on sentences starting at position 0 has
    never seen.

    Web-pretrained LMs can also copy from their context (induction heads), which is what lets a linear projector
    make GPT-2 reconstruct an AD from its word tokens. A tiny LM trained briefly on a few thousand ADs does not
    learn it, and repeating a sentence would not teach it: the LM memorises the sentence instead. So with
    ``repeat`` > 0 every step also trains on copy rows laid out like the reconstruction prompt,
    ``[y] <BOS> [y] <EOS>`` from position 0, where ``y`` is a training AD's tokens in a fresh random order: the
    second ``y`` is unpredictable except by copying the first (:func:`copy_rows`).

    Args:
        texts: the training sentences.
        tokenizer: the LM's tokenizer.
        model: a Hugging Face causal LM (its parameters must require grad).
        steps: optimizer steps (AdamW, warm-up + cosine to 0.1 x lr).
        batch_size: text blocks per step, drawn by a seeded permutation, epoch after epoch.
        block_size: tokens per block.
        lr: peak learning rate.
        repeat: copy rows per step, as a fraction of ``batch_size`` (0: plain text only).
        seed: data-order and shuffling seed.
        progress: show a tqdm bar.

    Returns:
        The loss of every step (text and copy rows together, weighted by their tokens).
    """
    bos, eos, pad = special_ids(tokenizer)
    g = torch.Generator().manual_seed(seed)
    encoded = [x for x in tokenizer([t for t in texts if t.strip()], add_special_tokens=False)["input_ids"] if x]
    stream = [t for x in encoded for t in [bos, *x, eos]]
    n_blocks = len(stream) // block_size
    if n_blocks < 1:
        raise ValueError(f"pretrain_lm needs at least {block_size} tokens of text, got {len(stream)}")
    device = next(model.parameters()).device
    blocks = torch.tensor(stream[: n_blocks * block_size]).view(n_blocks, block_size)  # (n_blocks, block_size)
    n_copy = round(repeat * batch_size)
    max_copy = max(1, (block_size - 2) // 2)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, max(1, steps // 20), steps, 0.1))
    order: list[int] = []
    losses: list[float] = []
    was_training = model.training
    model.train()
    for _ in tqdm(range(steps), desc="pre-training the LM", disable=not progress):
        if len(order) < batch_size:
            order += torch.randperm(n_blocks, generator=g).tolist()
        ids = blocks[order[:batch_size]].to(device)  # (B, block_size)
        order = order[batch_size:]
        n_text = ids.numel() - len(ids)
        loss = model(input_ids=ids, labels=ids).loss * n_text
        n_tokens = n_text
        if n_copy:
            rows = copy_rows(encoded, n_copy, max_copy, (bos, eos, pad), g)
            cids, cattn, clabels = (t.to(device) for t in rows)
            n = int((clabels[:, 1:] != IGNORE).sum())
            loss = loss + model(input_ids=cids, attention_mask=cattn, labels=clabels).loss * n
            n_tokens += n
        loss = loss / n_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.train(was_training)
    return losses
