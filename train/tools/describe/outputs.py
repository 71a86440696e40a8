"""The described film's files, each written atomically: WebVTT (webvtt-py) + SRT, predictions JSONL, HTML preview.

A *cue* is a dict: ``index``, ``start``/``end`` (seconds the AD is spoken: from the slot's start for its spoken
duration, never past the slot), ``slot_start``/``slot_end`` (the slot it describes), ``text``, ``fits``, ``how``.
"""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path

from distinctad.common import atomic_write_text


def timestamp(seconds: float) -> str:
    """WebVTT time ``HH:MM:SS.mmm``."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def to_webvtt(cues: list[dict]):
    """A ``webvtt.WebVTT`` of the cues (identifier ``ad-N``)."""
    import webvtt

    vtt = webvtt.WebVTT()
    for c in cues:
        vtt.captions.append(
            webvtt.Caption(timestamp(c["start"]), timestamp(c["end"]), c["text"], identifier=f"ad-{c['index']}")
        )
    return vtt


def write_subtitles(cues: list[dict], vtt_path: str | os.PathLike, srt_path: str | os.PathLike) -> None:
    """``MOVIE.ad.vtt`` and ``MOVIE.ad.srt`` through webvtt-py's own writers."""
    vtt = to_webvtt(cues)
    for path, fmt in ((vtt_path, "vtt"), (srt_path, "srt")):
        buf = io.StringIO()
        vtt.write(buf, format=fmt)
        atomic_write_text(path, buf.getvalue())


def write_jsonl(cues: list[dict], movie_id: str, path: str | os.PathLike) -> None:
    """The eval harness's prediction format keyed by time (``movie``, ``start``, ``end``, ``text``: the slot the AD
    describes), so ``distinctad-eval --gt ANNOTATIONS`` scores a described film against ground truth with
    time-based matching; ``cue_start``/``cue_end``/``fits`` ride along (the harness ignores them)."""
    rows = [
        {
            "movie": movie_id,
            "start": c["slot_start"],
            "end": c["slot_end"],
            "text": c["text"],
            "cue_start": c["start"],
            "cue_end": c["end"],
            "fits": c["fits"],
        }
        for c in cues
    ]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - audio description</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
video {{ max-width: 100%; width: 640px; max-height: 360px; background: #000; display: block; }}
#now {{ min-height: 1.5em; margin: .5em 0; font-style: italic; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }}
td.t {{ font-family: monospace; white-space: nowrap; }}
tr.long td {{ color: #a00; }}
tr.on td {{ background: #ffe9a8; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<video id="film" controls preload="auto" src="{video}">
  <track id="ad" kind="descriptions" label="Audio description" srclang="en" src="{vtt}" default>
</video>
<div id="now" aria-live="polite"></div>
<table><thead><tr><th>#</th><th>start</th><th>end</th><th>audio description</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
const film = document.getElementById("film"), track = film.textTracks[0], now = document.getElementById("now");
track.mode = "hidden";  // descriptions are not rendered; we show the active one below
track.addEventListener("cuechange", () => {{
  const cue = track.activeCues && track.activeCues[0];
  now.textContent = cue ? cue.text : "";
  document.querySelectorAll("tr.on").forEach(r => r.classList.remove("on"));
  if (cue) {{ const r = document.getElementById(cue.id); if (r) r.classList.add("on"); }}
}});
document.querySelectorAll("tr[data-start]").forEach(r =>
  r.addEventListener("click", () => {{ film.currentTime = +r.dataset.start; film.play(); }}));
</script>
</body></html>
"""


def write_preview(cues: list[dict], title: str, video: str, vtt: str, summary: str, path: str | os.PathLike) -> None:
    """``index.html``: the film in a ``<video>`` with the VTT as ``<track kind="descriptions">`` and the AD list
    (click a row to seek; ADs that do not fit are red). ``video``/``vtt`` are URLs relative to the page."""
    rows = "\n".join(
        f'<tr id="ad-{c["index"]}" data-start="{c["start"]:.3f}"{" class=long" if not c["fits"] else ""}>'
        f'<td>{c["index"]}</td><td class="t">{timestamp(c["start"])}</td><td class="t">{timestamp(c["end"])}</td>'
        f"<td>{html.escape(c['text'])}</td></tr>"
        for c in cues
    )
    page = PAGE.format(
        title=html.escape(title),
        summary=html.escape(summary),
        video=html.escape(video, quote=True),
        vtt=html.escape(vtt, quote=True),
        rows=rows,
    )
    atomic_write_text(path, page)


def relative_url(target: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """``target`` as a URL relative to the page's folder (forward slashes, percent-escaped)."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return quote(rel.replace(os.sep, "/"))
