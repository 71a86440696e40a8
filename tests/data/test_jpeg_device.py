"""Stage-I frames decoded on the rank's device (``data.jpeg_decode: device``), tested on the CPU fallback.

The loader passes each batch's JPEGs as bytes; ``decode_frames`` decodes them (torchvision; nvJPEG on CUDA) and runs
open_clip's own transforms on tensors. The frames must match the PIL path of the loader workers, padding rows must
stay padding, and a corrupt JPEG must still be a counted skip in the workers, not an error in the training step.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from distinctad.data.cli import main as shards_cli
from distinctad.data.decode import check_jpeg
from distinctad.data.jpeg import (
    TensorTransform,
    _decode_jpeg,
    batch_frames,
    decode_frames,
    draw_crop_boxes,
    nvjpeg_works,
    resample_boxes,
)
from distinctad.data.wds_pipeline import get_wds_loader
from distinctad.testing import rewrite_tar

SIZE = 32  # the tiny CLIP's input; the shards' frames are 40 px on the short side, so Resize does real work


def _transforms():
    ev = open_clip.image_transform(SIZE, is_train=False, mean=None, std=None)
    tr = open_clip.image_transform(SIZE, is_train=True, mean=None, std=None, aug_cfg={"scale": (0.5, 1.0)})
    return tr, ev


@pytest.fixture(scope="module")
def frames_shards(tmp_path_factory, synth_dir) -> Path:
    out = tmp_path_factory.mktemp("frames40")
    shards_cli(
        [
            "build",
            "--annotations",
            str(synth_dir / "annotations.json"),
            "--videos",
            str(synth_dir / "videos"),
            "--kind",
            "frames",
            "--num-frames",
            "2",
            "--short-side",
            "40",
            "--maxcount",
            "25",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    return out


def _jpeg(w: int = 48, h: int = 40, seed: int = 0, smooth: bool = False) -> bytes:
    """Random pixels, or smooth gradients (film-like: where decoders and resamplers agree to a level or so)."""
    rng = np.random.default_rng(seed)
    if smooth:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b = rng.uniform(0.02, 0.05, 2)
        pixels = np.stack(
            [128 + 100 * np.sin(a * xx), 128 + 100 * np.cos(b * yy), 128 + 60 * np.sin(a * (xx + yy))], -1
        )
    else:
        pixels = rng.integers(0, 256, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("workers", [0, 1])
def test_device_decode_matches_the_workers_pil_path(frames_shards, workers):
    _, ev = _transforms()
    pil = get_wds_loader(str(frames_shards), "frames", 7, is_train=False, preprocess=ev)
    raw = get_wds_loader(str(frames_shards), "frames", 7, is_train=False, jpeg_bytes=True, num_workers=workers)
    tf = TensorTransform.from_compose(ev)
    assert not tf.random and [type(t).__name__ for t in tf.per_image] == ["Resize", "CenterCrop"]
    n_valid = n_pad = 0
    for a, b in zip(pil.dataloader, raw.dataloader, strict=True):
        assert "images" not in b and b["jpeg_data"].dtype == torch.uint8 and b["jpeg_offsets"].shape == (7 * 2 + 1,)
        assert b["key"] == a["key"] and torch.equal(b["valid"], a["valid"])
        images = batch_frames(b, "cpu", tf)
        assert images.shape == a["images"].shape == (7, 2, 3, SIZE, SIZE) and images.dtype == torch.float32
        v = a["valid"]
        diff = (images[v] - a["images"][v]).abs()
        # the same libjpeg decode; PIL's and torch's bicubic antialiased resize differ by a few uint8 levels at most
        # (one level is ~0.015 after CLIP's normalisation)
        assert diff.max() < 0.1 and diff.mean() < 0.01, (diff.max(), diff.mean())
        assert (images[~v] == 0).all()  # padding rows: empty JPEGs, zero frames
        n_valid, n_pad = n_valid + int(v.sum()), n_pad + int((~v).sum())
    assert n_valid == raw.num_samples and n_pad > 0  # 60 clips in batches of 7: the last batch has padding


def test_train_transform_draws_a_crop_per_frame():
    tr, _ = _transforms()
    tf = TensorTransform.from_compose(tr)
    assert tf.random and [type(t).__name__ for t in tf.per_image] == ["RandomResizedCrop"] and tf._crop_op()
    data = _jpeg()
    blob = torch.frombuffer(bytearray(data * 4), dtype=torch.uint8)
    offsets = np.arange(5, dtype=np.int64) * len(data)
    torch.manual_seed(0)
    out = decode_frames(blob, offsets, 2, tf, "cpu")
    assert out.shape == (2, 2, 3, SIZE, SIZE)
    frames = out.view(4, 3, SIZE, SIZE)
    # the same JPEG four times: each frame its own random crop (scale 0.5-1), so no two frames are equal
    assert all(not torch.equal(frames[i], frames[j]) for i in range(4) for j in range(i + 1, 4))
    # and every value is a normalised pixel (CLIP's mean/std), not garbage
    assert frames.min() > -2 and frames.max() < 2.2


def test_crop_boxes_follow_random_resized_crop():
    """draw_crop_boxes, vectorised, draws from RandomResizedCrop.get_params's distribution, fallback included."""
    crop = T.RandomResizedCrop(SIZE, scale=(0.5, 1.0))
    H, W, n = 224, 398, 4000
    torch.manual_seed(0)
    ours = draw_crop_boxes([(H, W)] * n, crop.scale, crop.ratio).double()  # (n, 4): top, left, h, w
    x = torch.zeros((3, H, W))
    ref = torch.tensor([crop.get_params(x, crop.scale, crop.ratio) for _ in range(n)], dtype=torch.float64)
    assert ours.shape == ref.shape == (n, 4)
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    frac, aspect = h * w / (H * W), w / h
    assert frac.min() > 0.49 and frac.max() <= 1 and aspect.min() > 0.74 and aspect.max() < 1.34
    for col, name in enumerate(["top", "left", "height", "width"]):  # means and spreads agree (n = 4000)
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 0.05 * ref[:, col].mean() + 1, name
        assert abs(ours[:, col].std() - ref[:, col].std()) < 0.1 * ref[:, col].std() + 1, name
    # an image no try fits (far narrower than 3:4): torchvision's centre crop, exactly
    tall = torch.zeros((3, 400, 20))
    big = T.RandomResizedCrop(SIZE, scale=(0.99, 1.0))
    assert (
        draw_crop_boxes([(400, 20)], big.scale, big.ratio).tolist()
        == [list(big.get_params(tall, big.scale, big.ratio))]
        == [[186, 0, 27, 20]]
    )


def test_batched_resampling_matches_per_frame_bicubic():
    """One roi_align over all boxes against torchvision's per-frame bicubic antialiased resized_crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    decode, rgb = _decode_jpeg()
    blobs = [_jpeg(80, 48, seed=i, smooth=True) for i in range(6)] + [_jpeg(64, 64, seed=9, smooth=True)] * 2
    images = [decode(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=rgb) for b in blobs]
    torch.manual_seed(3)
    boxes = draw_crop_boxes([tuple(x.shape[-2:]) for x in images], (0.3, 1.0), (3 / 4, 4 / 3))
    ours = resample_boxes(images, boxes, (SIZE, SIZE))  # two image sizes: two roi_align groups
    ref = torch.stack(
        [
            F.resized_crop(x, *b.tolist(), [SIZE, SIZE], InterpolationMode.BICUBIC, antialias=True).float()
            for x, b in zip(images, boxes)
        ]
    )
    assert ours.shape == ref.shape == (8, 3, SIZE, SIZE)
    diff = (ours - ref).abs()  # uint8 levels
    assert diff.mean() < 1.5 and diff.max() < 25, (diff.mean(), diff.max())
    moved = resample_boxes(images, torch.cat([boxes[:, :2] // 2, boxes[:, 2:] // 2], 1), (SIZE, SIZE))
    assert (moved - ref).abs().mean() > 4 * diff.mean()  # other boxes: the comparison is not vacuous


def test_check_jpeg_accepts_whole_jpegs_and_names_what_is_wrong():
    good = _jpeg()
    assert check_jpeg(good) is good and check_jpeg(good + b"\0\0") is not None  # zero padding after EOI is fine
    with pytest.raises(ValueError, match="truncated JPEG"):
        check_jpeg(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a JPEG"):
        check_jpeg(b"GIF89a" + good)
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with pytest.raises(ValueError, match="not a JPEG"):
        check_jpeg(png.getvalue())


def test_corrupt_jpeg_is_a_counted_skip_in_the_workers(frames_shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in frames_shards.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tar = sorted(bad.glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        victim = next(m.name for m in tf.getmembers() if m.name.endswith(".01.jpg"))
    rewrite_tar(tar, lambda name, data: data[: len(data) // 3] if name == victim else data)
    raw = get_wds_loader(str(bad), "frames", 8, is_train=False, jpeg_bytes=True, pad_eval=False)
    tf = TensorTransform.from_compose(_transforms()[1])
    keys = []
    for b in raw.dataloader:
        assert batch_frames(b, "cpu", tf).shape == (len(b["key"]), 2, 3, SIZE, SIZE)  # every JPEG left decodes
        keys += b["key"]
    assert victim.split(".")[0] not in keys and len(keys) == raw.num_samples - 1 and raw.num_skipped == 1


def test_transforms_that_need_pil_and_undecodable_bytes_are_one_line_errors():
    pil_only = T.Compose([lambda img: img.convert("RGB"), T.ToTensor()])
    with pytest.raises(ValueError, match="does not run on tensors: AttributeError"):
        TensorTransform.from_compose(pil_only)
    with pytest.raises(ValueError, match="no ToTensor step"):
        TensorTransform.from_compose(T.Compose([T.Resize(8)]))
    tf = TensorTransform.from_compose(_transforms()[1])
    junk = torch.frombuffer(bytearray(b"\xff\xd8not a jpeg at all\xff\xd9"), dtype=torch.uint8)
    with pytest.raises(ValueError, match="undecodable JPEG"):
        decode_frames(junk, np.array([0, len(junk)]), 1, tf, "cpu")
    with pytest.raises(ValueError, match="not a whole number of 2-frame clips"):
        decode_frames(junk, np.array([0, len(junk)]), 2, tf, "cpu")


def test_nvjpeg_probe_says_why_not_on_cpu():
    assert nvjpeg_works("cpu") == "cpu device (nvJPEG needs CUDA)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh runs it on a GPU)")
def test_nvjpeg_matches_the_cpu_decoder_on_cuda():
    assert nvjpeg_works("cuda") is None
    tf = TensorTransform.from_compose(_transforms()[1])
    data = _jpeg(64, 48, smooth=True)
    blob, offsets = torch.frombuffer(bytearray(data), dtype=torch.uint8), np.array([0, len(data)])
    gpu = decode_frames(blob, offsets, 1, tf, "cuda")
    assert gpu.device.type == "cuda" and gpu.shape == (1, 1, 3, SIZE, SIZE)
    cpu = decode_frames(blob, offsets, 1, tf, "cpu")
    diff = (gpu.cpu() - cpu).abs()
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or two on smooth content
    assert diff.mean() < 0.05, (diff.mean(), diff.max())
    train = TensorTransform.from_compose(_transforms()[0])
    torch.manual_seed(0)
    a = decode_frames(blob, offsets, 1, train, "cuda").cpu()
    torch.manual_seed(0)
    b = decode_frames(blob, offsets, 1, train, "cpu")
    assert (a - b).abs().mean() < 0.05  # the same crop box on both devices
