"""DistinctAD Stage-II captioner: frame features of a window of clips -> one AD per clip.

Per window of N clips (paper §3.2, supp. C, D; DESIGN.md §5):

    X_i (T×D) --Perceiver--> H_i (L×d) --Contextual EMA over the window--> bases M (K×d)
    H̃_i = CrossAttn(H_i, M),  Ĥ_i = H_i − H̃_i,  prompt_i = [H_i + α·Ĥ_i][β·mean_{j≠i} Ĥ_j]
    LLM input embeddings: [proj(prompt_i)][text context: the K previous ADs][<bos> AD_i <eos>]
    loss = next-token CE on AD_i (+ <eos>)  +  λ_dist · L_dist

With both paths off (configuration A0) the Contextual EMA and the cross-attention are not even built and the
prompt is H_i. The module holds no distributed logic: the training job wraps it (DeepSpeed) and calls
``forward(**prepare_batch(batch, tokenizer, cfg))``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from distinctad.train.models.captioner_config import IGNORE, CaptionerConfig, GenerationArgs
from distinctad.train.models.contextual_ema import ContextualEMA
from distinctad.train.models.cross_attention import ContextCrossAttention
from distinctad.train.models.distinctive import distinctive_targets, distinctive_word_loss, pad_targets
from distinctad.train.models.distinctive_prompt import DistinctivePrompt
from distinctad.train.models.llm import apply_lora, build_llm, generate_settings, left_pad, special_ids
from distinctad.train.models.perceiver import PerceiverResampler


def prepare_batch(batch: dict, tokenizer, cfg: CaptionerConfig) -> dict[str, torch.Tensor]:
    """Turn a collated window batch (data/wds_pipeline.py) into the tensors ``forward`` / ``generate`` take.

    The valid clips (``clip_mask``) of all windows are flattened window-major into V rows. Clip i's text is
    [context: last ``context_ads`` ADs before it — the window's ``context`` then the window's own earlier ADs]
    [<bos>][AD_i][<eos>].

    Args:
        batch: dict with feats (B, N, T, D), frame_mask (B, N, T), clip_mask (B, N), sentences, context.
        tokenizer: the LLM's tokenizer.
        cfg: the captioner config (context_ads, token limits, max_dist_words).

    Returns:
        feats (B, N, T, D) float, frame_mask (B, N, T) bool, clip_mask (B, N) bool,
        text_ids (V, S) right-padded, text_mask (V, S) bool, text_labels (V, S) (-100 except AD and <eos>),
        gen_ids (V, S_g) = context + <bos>, left-padded, gen_mask (V, S_g) bool,
        dist_targets (V, W) first-sub-token ids of the distinctive words, -1 = none.
    """
    if batch.get("feats") is None:
        raise ValueError("this window batch has no frame features (text-only windows cannot train or generate)")
    bos, eos, pad = special_ids(tokenizer)
    clip_mask = batch["clip_mask"].bool()
    B, N = clip_mask.shape
    texts, labels, prompts = [], [], []
    windows = []
    for b in range(B):
        sentences = [s if clip_mask[b, n] else "" for n, s in enumerate(batch["sentences"][b])]
        windows.append(sentences)
        history = [c for c in batch["context"][b] if c]
        for n in range(N):
            if not clip_mask[b, n]:
                continue
            ctx_ids = []
            if cfg.context_ads > 0 and cfg.max_context_tokens > 0 and history:
                ctx_text = " ".join(history[-cfg.context_ads :])
                ctx_ids = tokenizer(ctx_text, add_special_tokens=False)["input_ids"][-cfg.max_context_tokens :]
            ad_ids = tokenizer(sentences[n].strip(), add_special_tokens=False)["input_ids"][: cfg.max_ad_tokens]
            texts.append(ctx_ids + [bos] + ad_ids + [eos])
            labels.append([IGNORE] * (len(ctx_ids) + 1) + ad_ids + [eos])
            prompts.append(ctx_ids + [bos])
            if sentences[n]:  # blanked sentences (generation without ground-truth context) are no context
                history.append(sentences[n])

    V = len(texts)
    S = max((len(t) for t in texts), default=1)
    text_ids = torch.full((V, S), pad, dtype=torch.long)
    text_labels = torch.full((V, S), IGNORE, dtype=torch.long)
    text_mask = torch.zeros(V, S, dtype=torch.bool)
    for v, (ids, lab) in enumerate(zip(texts, labels)):
        text_ids[v, : len(ids)] = torch.tensor(ids)
        text_labels[v, : len(lab)] = torch.tensor(lab)
        text_mask[v, : len(ids)] = True
    S_g = max((len(p) for p in prompts), default=1)
    gen_ids = torch.full((V, S_g), pad, dtype=torch.long)
    gen_mask = torch.zeros(V, S_g, dtype=torch.bool)
    for v, ids in enumerate(prompts):
        gen_ids[v, S_g - len(ids) :] = torch.tensor(ids)
        gen_mask[v, S_g - len(ids) :] = True

    targets = distinctive_targets(windows, tokenizer, max_words=cfg.max_dist_words)  # B·N rows
    flat_valid = clip_mask.reshape(-1).tolist()
    dist_targets = pad_targets([t for t, ok in zip(targets, flat_valid) if ok])
    return dict(
        feats=batch["feats"],  # float16 from the shards; encode_visual casts on the model's device
        frame_mask=batch["frame_mask"].bool(),
        clip_mask=clip_mask,
        text_ids=text_ids,
        text_mask=text_mask,
        text_labels=text_labels,
        gen_ids=gen_ids,
        gen_mask=gen_mask,
        dist_targets=dist_targets,
    )


class DistinctADCaptioner(nn.Module):
    """The Stage-II model: Perceiver → Contextual EMA → cross-attention → distinctive prompt → LLM.

    Args:
        cfg: the config.
        tokenizer: the LLM's tokenizer (sizes tiny LLMs, gives bos/eos/pad ids).
        llm: an already built causal LM to use instead of ``build_llm(cfg.llm)`` (LoRA is still applied when
            ``cfg.lora``).
    """

    def __init__(self, cfg: CaptionerConfig, tokenizer, llm: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.perceiver = PerceiverResampler(
            cfg.feature_dim, cfg.d_model, cfg.num_latents, cfg.perceiver_layers, cfg.perceiver_heads, cfg.max_frames
        )
        self.prompt = DistinctivePrompt(
            cfg.alpha_path, cfg.alpha, cfg.alpha_learnable, cfg.beta_path, cfg.beta, cfg.beta_learnable
        )
        # Only built when used: A0 holds no unused parameters (DeepSpeed / DDP dislike those).
        self.ema = self.xattn = None
        if self.prompt.needs_context:
            self.ema = ContextualEMA(cfg.d_model, cfg.num_bases, cfg.ema_iters, cfg.tau, cfg.momentum, cfg.ema_grad)
            self.xattn = ContextCrossAttention(cfg.d_model)
        if llm is None:
            llm = build_llm(
                cfg.llm,
                tokenizer,
                freeze=cfg.freeze_llm,
                dtype=cfg.llm_dtype,
                gradient_checkpointing=cfg.gradient_checkpointing,
                attn_implementation=cfg.attn_implementation,
            )
        elif cfg.freeze_llm:
            llm.requires_grad_(False)
        if cfg.lora:
            llm = apply_lora(llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        self.llm = llm
        self.proj = nn.Linear(cfg.d_model, llm.get_input_embeddings().embedding_dim)
        self.bos_id, self.eos_id, self.pad_id = special_ids(tokenizer)

    def encode_visual(
        self, feats: torch.Tensor, frame_mask: torch.Tensor, clip_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Visual prompt of every valid clip, in the LLM's embedding space.

        Args:
            feats: (B, N, T, D) frame features; frame_mask (B, N, T); clip_mask (B, N).

        Returns:
            (prompt embeddings (V, P, E) of the valid clips, window-major; EMA statistics).
        """
        B, N, T, D = feats.shape
        L = self.cfg.num_latents
        p_dtype = self.proj.weight.dtype
        h = self.perceiver(feats.reshape(B * N, T, D).to(p_dtype), frame_mask.reshape(B * N, T))  # (B·N, L, d)
        h = h.view(B, N, L, -1)  # (B, N, L, d)
        stats: dict[str, torch.Tensor] = {}
        h_ctx = None
        if self.prompt.needs_context:
            ema = self.ema(h, clip_mask)
            h_ctx = self.xattn(h, ema.bases)  # (B, N, L, d)
            stats = {"ema_entropy": ema.usage_entropy, "ema_assign_entropy": ema.assign_entropy}
        prompt = self.prompt(h, h_ctx, clip_mask)  # (B, N, P, d)
        prompt = prompt[clip_mask.bool()]  # (V, P, d)
        embed_dtype = self.llm.get_input_embeddings().weight.dtype
        return self.proj(prompt).to(embed_dtype), stats  # (V, P, E)

    def forward(
        self,
        feats: torch.Tensor,
        frame_mask: torch.Tensor,
        clip_mask: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        text_labels: torch.Tensor,
        dist_targets: torch.Tensor | None = None,
        gen_ids: torch.Tensor | None = None,
        gen_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training / validation losses on a prepared window batch (``gen_*`` are accepted and ignored).

        Returns:
            loss (with gradient) = lm_loss + lambda_dist · dist_loss; lm_loss, dist_loss (0 without targets),
            ema_entropy / ema_assign_entropy (when the EMA runs), alpha / beta (when learnable),
            num_tokens (AD tokens in the loss), num_clips — all detached except ``loss``.
        """
        prompt, stats = self.encode_visual(feats, frame_mask, clip_mask)
        V, P, _ = prompt.shape
        text_emb = self.llm.get_input_embeddings()(text_ids)  # (V, S, E)
        inputs = torch.cat([prompt, text_emb], dim=1)  # (V, P+S, E)
        attn = torch.cat([text_mask.new_ones(V, P), text_mask], dim=1).long()  # (V, P+S)
        # Only the final hidden states are needed: the LM head runs on the AD positions and pooled prompt only,
        # which keeps a 128k-vocabulary LLaMA from materialising (V, P+S, vocab) logits.
        out = self.llm(
            inputs_embeds=inputs, attention_mask=attn, output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
        hidden = out.hidden_states[-1]  # (V, P+S, E), after the final norm
        lm_head = self.llm.get_output_embeddings()

        labels = torch.cat([text_labels.new_full((V, P), IGNORE), text_labels], dim=1)  # (V, P+S)
        target = labels[:, 1:]  # position t predicts token t+1
        sel = target != IGNORE  # (V, P+S-1)
        logits = lm_head(hidden[:, :-1][sel])  # (n_tok, vocab)
        lm_loss = F.cross_entropy(logits.float(), target[sel])

        loss = lm_loss
        dist_loss = lm_loss.new_zeros(())
        if dist_targets is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.lambda_dist > 0):
                pooled = hidden[:, :P].max(dim=1).values  # (V, E) max over the visual-prompt positions
                dist_loss = distinctive_word_loss(lm_head(pooled), dist_targets)
            if self.cfg.lambda_dist > 0:
                loss = loss + self.cfg.lambda_dist * dist_loss
        result = {
            "loss": loss,
            "lm_loss": lm_loss.detach(),
            "dist_loss": dist_loss.detach(),
            "num_tokens": sel.sum().detach(),
            "num_clips": torch.tensor(V, device=loss.device),
        }
        result.update(stats)
        if isinstance(self.prompt.alpha, nn.Parameter):
            result["alpha"] = self.prompt.alpha.detach()
        if isinstance(self.prompt.beta, nn.Parameter):
            result["beta"] = self.prompt.beta.detach()
        return result

    @torch.no_grad()
    def generate_ids(
        self, prepared: dict[str, torch.Tensor], gen: GenerationArgs | None = None, **generate_kwargs
    ) -> torch.Tensor:
        """Generated token ids of every valid clip (eval mode, μ frozen; the previous mode is restored).

        The LLM sees [prompt][context][<bos>] (left-padded) and continues with the AD until <eos>. The text
        context is whatever ``prepare_batch`` put in ``gen_ids``: the ground-truth previous ADs, or the model's own
        or none (:mod:`distinctad.train.stage2.context`).

        Args:
            prepared: output of ``prepare_batch`` (the text_* entries are not used).
            gen: the decoding settings (default: ``GenerationArgs()``, our defaults; its batch_size is not used here).
            **generate_kwargs: passed to HF ``generate``, overriding ``gen`` and the settings below (min_new_tokens=1
                keeps an AD from being empty).

        Returns:
            (V, new_tokens) ids, window-major over the valid clips, padded with pad after <eos>.
        """
        was_training = self.training
        self.eval()
        try:
            clip_mask = prepared["clip_mask"].bool()
            prompt, _ = self.encode_visual(prepared["feats"], prepared["frame_mask"], clip_mask)  # (V, P, E)
            V, P, E = prompt.shape
            embed = self.llm.get_input_embeddings()
            gen_ids, gen_mask = prepared["gen_ids"], prepared["gen_mask"].bool()
            # One embedding call for all rows: under ZeRO-3 every module call is collective, so it must not
            # depend on this rank's number of clips.
            gen_emb = embed(gen_ids)  # (V, S_g, E)
            rows = [torch.cat([prompt[v], gen_emb[v][gen_mask[v]]], dim=0) for v in range(V)]
            inputs, attn = left_pad(rows)  # (V, S, E), (V, S)
            kwargs = generate_settings((gen or GenerationArgs()).decoding(), self.pad_id, self.eos_id, self.bos_id)
            # <bos>/<pad> decode to nothing: never generate them, so an AD is never an empty string.
            suppress = sorted({self.bos_id, self.pad_id} - {self.eos_id})
            if suppress:
                kwargs["suppress_tokens"] = suppress
            kwargs.update(generate_kwargs)
            with warnings.catch_warnings():
                # Without input_ids the penalties see only the generated AD, not the prompt and context: intended.
                warnings.filterwarnings("ignore", message=r"Passing `\w+` with `inputs_embeds`")
                return self.llm.generate(inputs_embeds=inputs, attention_mask=attn, **kwargs)  # (V, new tokens)
        finally:
            self.train(was_training)

    def generate(
        self, prepared: dict[str, torch.Tensor], tokenizer, gen: GenerationArgs | None = None, **generate_kwargs
    ) -> list[list[str]]:
        """Generate one AD per valid clip (``generate_ids`` with ``gen`` and ``generate_kwargs``) and decode it.

        Returns:
            Per window, the ADs of its valid clips in clip order (the ``clip_mask`` True positions).
        """
        ids = self.generate_ids(prepared, gen, **generate_kwargs)
        texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        grouped, start = [], 0
        for count in prepared["clip_mask"].bool().sum(dim=1).tolist():
            grouped.append(texts[start : start + count])
            start += count
        return grouped


def build_captioner(cfg: CaptionerConfig, tokenizer=None) -> tuple[DistinctADCaptioner, object]:
    """Build the tokenizer (``cfg.tokenizer`` or the LLM's directory) and the captioner.

    Args:
        cfg: the config.
        tokenizer: an already loaded tokenizer (skips loading).

    Returns:
        (model, tokenizer).
    """
    from distinctad.train.models.llm import TINY_LLMS, load_tokenizer

    if tokenizer is None:
        path = cfg.tokenizer or (None if cfg.llm in TINY_LLMS else cfg.llm)
        if path is None:
            raise ValueError(f"'{cfg.llm}' has no tokenizer of its own; set tokenizer to a trained BPE directory")
        tokenizer = load_tokenizer(path)
    return DistinctADCaptioner(cfg, tokenizer), tokenizer
