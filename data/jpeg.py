"""Stage-I frames decoded on the rank's device: nvJPEG through torchvision, the CLIP transforms on tensors.

With ``data.jpeg_decode: device`` (Stage-I), the loader workers only read the shards and check each JPEG whole
(:func:`distinctad.data.decode.check_jpeg`); a batch carries the B x T JPEGs as bytes (``jpeg_data``,
``jpeg_offsets``, see ``kinds.py``), and the rank decodes them here: on a CUDA device with one batched
``torchvision.io.decode_jpeg(..., device="cuda")`` call (nvJPEG), elsewhere with torchvision's CPU decoder (the
fallback, so CPU runs and tests take the same path). On 8 GPUs, CPU decoding of 128 clips x 8 frames per GPU step
would otherwise need many cores per GPU (``benchmarks/jpeg_decode.py`` prints how many).

The transforms are open_clip's own (``clip_transforms``) run on uint8 tensors, which torchvision's transforms
accept: everything before ``ToTensor`` (Resize, CenterCrop...) per group of same-sized images when nothing is random,
else image by image; ``ToTensor`` becomes ``/255``; everything after it (Normalize) runs once on the stacked batch.
open_clip's training transform (RandomResizedCrop alone) has a batched path: every frame's crop box is drawn from
RandomResizedCrop's distribution in one vectorised pass (:func:`draw_crop_boxes`), and all boxes are resampled in one
``torchvision.ops.roi_align`` call (bilinear, averaged over each output pixel's footprint) instead of one bicubic
resize per frame, which on an H200 took 3.8 ms per 8-frame clip, more than the Stage-I step's 1.7 ms.
Results match the PIL path to within JPEG decoder and resampling differences (tests bound them); they are not
bit-identical to it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

_SKIPPED = ("MaybeConvertMode", "_convert_to_rgb")  # RGB already: decode_jpeg(mode=RGB)
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


def _decode_jpeg():
    """torchvision's ``decode_jpeg`` (its documented batched nvJPEG path) and its RGB mode. torchvision >= 0.29 warns
    on every call that TorchCodec will take decoding over; that warning is silenced here (TorchCodec is not a
    dependency)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
            return decode_jpeg(*args, **kwargs)

    return decode, ImageReadMode.RGB


@dataclass
class TensorTransform:
    """An open_clip (PIL) transform re-run on decoded uint8 tensors.

    ``per_image``: the transforms before ``ToTensor``, on one (3, H, W) uint8 image; ``on_batch``: those after
    it, on the stacked (N, 3, S, S) float batch in [0, 1]. ``random``: any of them draws (then ``per_image`` runs
    image by image, as the PIL path draws per frame).
    """

    per_image: list[Callable]
    on_batch: list[Callable]
    random: bool
    batched_crop: bool = True
    """With ``per_image`` exactly one RandomResizedCrop: draw its boxes per frame, resample them in one roi_align."""

    @classmethod
    def from_compose(cls, compose) -> TensorTransform:
        """Split a torchvision ``Compose`` (open_clip's ``image_transform``) at its ``ToTensor``.

        Raises:
            ValueError: no ``ToTensor`` step, or a step that does not run on tensors (named).
        """
        steps = list(getattr(compose, "transforms", [compose]))
        names = [getattr(t, "__name__", type(t).__name__) for t in steps]
        cut = next((i for i, n in enumerate(names) if n in _TO_TENSOR), None)
        if cut is None:
            raise ValueError(f"transform has no ToTensor step to split at: {names}")
        per_image = [t for t, n in zip(steps[:cut], names[:cut]) if n not in _SKIPPED]
        on_batch = [t for t, n in zip(steps[cut + 1 :], names[cut + 1 :]) if n not in _SKIPPED]
        random = any(n.startswith("Random") or "Jitter" in n or "Gray" in n for n in names)
        out = cls(per_image, on_batch, random)
        try:  # a step that needs a PIL image fails here, once, rather than at the first batch
            out([torch.zeros((3, 48, 64), dtype=torch.uint8)])
        except Exception as e:  # noqa: BLE001 - name the step in one line
            raise ValueError(f"transform {names} does not run on tensors: {type(e).__name__}: {e}") from None
        return out

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.per_image:
            x = t(x)
        return x

    def _crop_op(self):
        from torchvision.transforms import RandomResizedCrop

        ok = self.batched_crop and len(self.per_image) == 1 and type(self.per_image[0]) is RandomResizedCrop
        return self.per_image[0] if ok else None

    def _batched_crops(self, crop, images: list[torch.Tensor]) -> torch.Tensor:
        """RandomResizedCrop on every frame: boxes from :func:`draw_crop_boxes`, resampled by :func:`resample_boxes`."""
        size = (crop.size, crop.size) if isinstance(crop.size, int) else tuple(crop.size)
        boxes = draw_crop_boxes([tuple(x.shape[-2:]) for x in images], crop.scale, crop.ratio)
        return resample_boxes(images, boxes, size)

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(N,) list of (3, H_i, W_i) uint8 images → (N, 3, S, S) float32 on their device."""
        crop = self._crop_op()
        if crop is not None:
            out = self._batched_crops(crop, images)
        elif self.random:
            out = torch.stack([self._geometry(x) for x in images])
        else:  # deterministic: one call per group of same-sized images (usually the whole batch)
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, x in enumerate(images):
                groups.setdefault(tuple(x.shape), []).append(i)
            parts: list[torch.Tensor | None] = [None] * len(images)
            for idx in groups.values():
                y = self._geometry(torch.stack([images[i] for i in idx]))
                for j, i in enumerate(idx):
                    parts[i] = y[j]
            out = torch.stack(parts)
        out = out.float().div_(255)
        for t in self.on_batch:
            out = t(out)
        return out


def draw_crop_boxes(
    sizes: list[tuple[int, int]], scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """RandomResizedCrop's boxes for many images at once: (N, 4) int64 rows (top, left, height, width).

    The same distribution as ``torchvision.transforms.RandomResizedCrop.get_params`` per image (up to 10 tries of a
    random area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``, then a centre crop), drawn from
    torch's global generator in one vectorised pass: one call per image took ~0.14 ms on a CPU core, 140 ms for a
    batch of 128 clips x 8 frames.

    Args:
        sizes: (H, W) of each image, pixels.
        scale: area fraction range, e.g. open_clip's (0.9, 1.0).
        ratio: aspect ratio (w / h) range, e.g. (3/4, 4/3).
    """
    hw = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    n, tries = len(hw), 10
    H, W = hw[:, 0:1], hw[:, 1:2]
    area = (H * W) * torch.empty(n, tries, dtype=torch.float64).uniform_(scale[0], scale[1])
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    aspect = torch.exp(torch.empty(n, tries, dtype=torch.float64).uniform_(float(log_r[0]), float(log_r[1])))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    pick = ok.int().argmax(1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    top = torch.floor(torch.rand(n, dtype=torch.float64) * (hw[:, 0] - h + 1))
    left = torch.floor(torch.rand(n, dtype=torch.float64) * (hw[:, 1] - w + 1))
    # no try fitted: torchvision's fallback, the centre crop clamped to the ratio range
    in_ratio = hw[:, 1] / hw[:, 0]
    fw = torch.where(
        in_ratio < min(ratio),
        hw[:, 1],
        torch.where(in_ratio > max(ratio), torch.round(hw[:, 0] * max(ratio)), hw[:, 1]),
    )
    fh = torch.where(in_ratio < min(ratio), torch.round(hw[:, 1] / min(ratio)), hw[:, 0])
    none = ~ok.any(1)
    w, h = torch.where(none, fw, w), torch.where(none, fh, h)
    top = torch.where(none, torch.div(hw[:, 0] - h, 2, rounding_mode="floor"), top)
    left = torch.where(none, torch.div(hw[:, 1] - w, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], 1).long()


def resample_boxes(images: list[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` (N, 4: top, left, height, width) out of (3, H_i, W_i) uint8 ``images`` and resize each to
    ``size`` in one ``torchvision.ops.roi_align`` call per image size (bilinear, averaged over each output pixel's
    footprint: antialiased). Returns (N, 3, *size) float32 in [0, 255], rounded to uint8 levels, on the images'
    device."""
    from torchvision.ops import roi_align

    dev = images[0].device
    out = torch.empty((len(images), 3, *size), dtype=torch.float32, device=dev)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(i)
    b = boxes.double()
    xyxy = torch.stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], 1)  # x1, y1, x2, y2
    for idx in groups.values():
        batch = torch.stack([images[i] for i in idx]).float()  # (n, 3, H, W)
        rois = torch.cat([torch.arange(len(idx), dtype=torch.float64)[:, None], xyxy[idx]], 1).float().to(dev)
        out[torch.tensor(idx, device=dev)] = roi_align(batch, rois, size, 1.0, -1, aligned=True)
    return out.round_().clamp_(0, 255)


def decode_frames(
    jpeg_data: torch.Tensor,
    jpeg_offsets: torch.Tensor | np.ndarray,
    num_frames: int,
    transform: TensorTransform | Callable[[list[torch.Tensor]], torch.Tensor],
    device: torch.device | str,
) -> torch.Tensor:
    """A batch's JPEG bytes → its (B, T, 3, S, S) float32 frames on ``device``.

    Args:
        jpeg_data: (total bytes,) uint8 on the CPU: the B*T JPEGs back to back (frames of clip b at b*T..b*T+T-1).
        jpeg_offsets: (B*T + 1,) int64: JPEG i is ``jpeg_data[offsets[i]:offsets[i + 1]]``; an empty one is a
            padding row's frame and comes out as zeros.
        num_frames: T.
        transform: :class:`TensorTransform` (or any callable of a list of uint8 (3, H, W) images).
        device: a CUDA device decodes with nvJPEG in one batched call; any other decodes on the CPU.

    Raises:
        ValueError: a JPEG that neither decoder can read (the loader workers check JPEGs whole, so this is rare).
    """
    decode_jpeg, rgb = _decode_jpeg()
    device = torch.device(device)
    offsets = [int(o) for o in (jpeg_offsets.tolist() if hasattr(jpeg_offsets, "tolist") else jpeg_offsets)]
    n = len(offsets) - 1
    if n % num_frames:
        raise ValueError(f"{n} JPEGs is not a whole number of {num_frames}-frame clips")
    data = jpeg_data.cpu()
    real = [i for i in range(n) if offsets[i + 1] > offsets[i]]
    blobs = [data[offsets[i] : offsets[i + 1]] for i in real]
    images: list[torch.Tensor] = []
    if blobs:
        target = device if device.type == "cuda" else "cpu"
        try:
            images = decode_jpeg(blobs, mode=rgb, device=target)
        except RuntimeError as e:
            if target == "cpu":
                raise ValueError(f"undecodable JPEG in the batch: {e}") from None
            logger.warning("nvJPEG failed on a batch (%s); decoding it on the CPU", e)
            images = [x.to(device) for x in decode_jpeg(blobs, mode=rgb)]
        images = [x.to(device) for x in images]
    frames = transform(images) if images else None
    if frames is None:  # a batch of padding rows only: nothing to size them by, never reaches a model
        return torch.zeros((n // num_frames, num_frames, 3, 0, 0), device=device)
    if len(real) == n:
        return frames.view(n // num_frames, num_frames, *frames.shape[1:])
    out = frames.new_zeros((n, *frames.shape[1:]))
    out[torch.tensor(real, device=device)] = frames
    return out.view(n // num_frames, num_frames, *frames.shape[1:])


def batch_frames(batch: dict, device: torch.device | str, transform: TensorTransform | None) -> torch.Tensor:
    """A frames batch's (B, T, 3, S, S) images on ``device``: decoded there when the batch carries JPEG bytes,
    else its ``images`` moved there."""
    if "jpeg_data" in batch:
        if transform is None:
            raise ValueError("batch carries JPEG bytes but no device transform was given")
        num_frames = (len(batch["jpeg_offsets"]) - 1) // len(batch["sentence"])
        return decode_frames(batch["jpeg_data"], batch["jpeg_offsets"], num_frames, transform, device)
    return batch["images"].to(device, non_blocking=True)


def nvjpeg_works(device: torch.device | str) -> str | None:
    """``None`` if a tiny JPEG decodes on ``device`` with torchvision's nvJPEG path, else why not (one line)."""
    import io

    from PIL import Image

    device = torch.device(device)
    if device.type != "cuda":
        return f"{device.type} device (nvJPEG needs CUDA)"
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 10)).save(buf, "JPEG")
    try:
        decode_jpeg, rgb = _decode_jpeg()
        (img,) = decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], mode=rgb, device=device)
        ok = img.shape == (3, 8, 16) and abs(int(img[0, 4, 8]) - 200) < 16
    except Exception as e:  # noqa: BLE001 - a missing nvJPEG build or driver: report, fall back
        return f"torchvision's decode_jpeg on {device} failed: {type(e).__name__}: {e}"
    return None if ok else "torchvision's decode_jpeg on CUDA returned a wrong image"


__all__ = ["TensorTransform", "batch_frames", "decode_frames", "draw_crop_boxes", "nvjpeg_works", "resample_boxes"]
