"""`laser compare RUN ... --html`: one folder that opens from disk (no server, no network).

`write_html(runs, rows, out, figures, options)` writes `out/index.html` (the score table with intervals,
the figures, the sample gallery) and `out/thumbs/` (one JPEG per image, made once: a later report into
the same folder reuses it, `thumbs/index.json` says which). The gallery holds every sample on which
the runs' answers differ and a seeded random page of the others (`report/gallery.py`); the page shows
`HtmlOptions.per_page` cards at a time, each with the image, every run's crop box and masked cells
drawn, the chosen layer, the decode path and each run's answer against the reference. Filters (dataset,
meta groups, chosen layer, decode path, "focus right / vanilla wrong" and the reverse, which samples) live
in the page's address (`#outcome=focus_right&path=contrastive&page=2`; `only=samples` hides the tables and
figures), so a view can be linked.
A sample whose image is missing gets a placeholder and a note, never an error.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gallery import dataset_galleries, dataset_images, gallery_entries
from .runs import Run

THUMBS = "thumbs"
THUMB_VERSION = 2  # part of a thumbnail's cache key: a new way of making them remakes them
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")  # fmt: skip


@dataclass(frozen=True)
class HtmlOptions:
    """per_page: cards per page; rest: agreeing samples shown (a random page of them); thumb: longest
    side of a thumbnail in pixels; seed: which agreeing samples; notes: lines shown at the top."""

    per_page: int = 24
    rest: int = 24
    thumb: int = 256
    seed: int = 0
    notes: tuple[str, ...] = ()  # shown at the top (e.g. run folders left out)


class Thumbnails:
    """JPEG thumbnails in `folder`, keyed by image path, size and modification time (made once)."""

    def __init__(self, folder: Path, side: int):
        self.folder, self.side = folder, side
        self.index_path = folder / "index.json"
        self.index: dict[str, list] = {}
        if self.index_path.is_file():
            try:
                self.index = json.loads(self.index_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.index = {}
            if not isinstance(self.index, dict):
                self.index = {}
        self.made = 0

    def get(self, path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
        """(file name under `thumbs/`, original (width, height), note): name None when unreadable."""
        from PIL import Image, ImageOps

        try:
            stat = path.stat()
        except OSError:
            return None, None, f"image {path} not found"
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.side}|{THUMB_VERSION}"
        key = hashlib.sha1(key.encode()).hexdigest()[:20]
        known = self.index.get(key)
        if isinstance(known, list) and len(known) == 3 and (self.folder / str(known[0])).is_file():
            return known[0], (known[1], known[2]), None
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")  # upright, as the data loader reads it
                size = image.size
                image.thumbnail((self.side, self.side))
                self.folder.mkdir(parents=True, exist_ok=True)
                image.save(self.folder / f"{key}.jpg", quality=85)
        except Exception as err:
            return None, None, f"image {path} unreadable ({type(err).__name__})"
        self.index[key] = [f"{key}.jpg", size[0], size[1]]
        self.made += 1
        return f"{key}.jpg", size, None

    def save(self) -> None:
        if self.index:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.index_path.write_text(json.dumps(self.index, sort_keys=True))


def report_data(runs: Sequence[Run], out: Path, options: HtmlOptions) -> dict[str, Any]:
    """What the page shows: runs (label, model, colour), entries and notes; makes the thumbnails."""
    thumbs = Thumbnails(out / THUMBS, options.thumb)
    galleries = dataset_galleries(runs, options.rest, options.seed)
    notes, entries, columns = list(options.notes), [], {}
    if len({g.dataset for g in galleries}) > 1:
        notes.append(f"{len(galleries)} datasets: the gallery's dataset filter shows one at a time")
    for gallery in galleries:
        images = dataset_images(gallery.runs[0])
        if images.note:
            notes.append(f"{gallery.dataset}: {images.note}")
        files, sizes, image_notes = {}, {}, {}
        for sample_id in [*gallery.disagree, *gallery.rest]:
            path = images.paths.get(sample_id)
            name, size, note = thumbs.get(path) if path else (None, None, None if images.note else "no image path")
            files[sample_id], image_notes[sample_id] = name, note
            if size:
                sizes[sample_id] = size
        for entry in gallery_entries(gallery, images, sizes):
            entry["thumb"] = f"{THUMBS}/{files[entry['id']]}" if files[entry["id"]] else None
            entry["note"] = image_notes[entry["id"]]
            entries.append(entry)
        columns[gallery.dataset] = {
            "runs": [{"label": f"{r.label} ({r.model})" if len({x.model for x in gallery.runs}) > 1 else r.label,
                      "colour": PALETTE[i % len(PALETTE)]} for i, r in enumerate(gallery.runs)],
            "focus": gallery.focus.label if gallery.focus else None,
            "vanilla": gallery.vanilla.label if gallery.vanilla else None,
            "disagree": len(gallery.disagree),
            "rest": len(gallery.rest),
        }
    thumbs.save()
    return {"datasets": columns, "entries": entries, "notes": notes, "per_page": options.per_page,
            "thumbs_made": thumbs.made}


def _finite(value: Any) -> Any:
    """`value` with every non-finite float made None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def script_json(data: Any) -> str:
    """JSON that can sit inside a <script> element: no `<`, `>` or `&` (escaped as \\u003c ...), no NaN."""
    text = json.dumps(_finite(data), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _table_html(markdown: str) -> str:
    """The markdown tables of `tables.markdown_table` as HTML (headings, paragraphs and tables)."""
    parts, table = [], []

    def flush() -> None:
        if not table:
            return
        head, body = table[0], table[2:]
        cells = lambda row, tag: "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in row)  # noqa: E731
        parts.append("<table><thead><tr>" + cells(head, "th") + "</tr></thead><tbody>"
                     + "".join("<tr>" + cells(r, "td") + "</tr>" for r in body) + "</tbody></table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(parts)


def _inline(text: str) -> str:
    """Escape, then markdown's **bold**."""
    escaped = html.escape(text)
    pieces = escaped.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(pieces))


def write_html(runs: Sequence[Run], markdown: str, out: Path, figures: Sequence[Path],
               options: HtmlOptions = HtmlOptions()) -> Path:
    """Write `out/index.html` (and `out/thumbs/`); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    data = report_data(runs, out, options)
    payload = script_json(data)
    figure_html = "".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}'
        f"</figcaption></figure>" for p in figures if p.suffix == ".png"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data["notes"])
    parts = {"TABLES": _table_html(markdown), "FIGURES": figure_html, "DATA": payload,
             "NOTES": f"<ul class='notes'>{notes}</ul>" if notes else ""}
    page = re.sub(r"\{\{(TABLES|FIGURES|NOTES|DATA)\}\}", lambda m: parts[m.group(1)], PAGE)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LASER report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px} h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse;margin:6px 0 12px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4} figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
figure img{max-width:520px;max-height:360px;border:1px solid #eee} figcaption{font-size:12px;color:#666}
.notes{color:#8a5a00} #filters{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:2}
#filters label{margin-right:12px;white-space:nowrap} select{font-size:13px}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;margin-top:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;background:#fafafa}
.pic{position:relative;width:100%;aspect-ratio:1/1;background:#eee;display:flex;align-items:center;justify-content:center}
.pic img,.pic svg{position:absolute;left:0;top:0;width:100%;height:100%}
.pic .missing{color:#888;font-size:12px;padding:8px;text-align:center}
.q{font-weight:600;margin:6px 0 2px} .meta{font-size:12px;color:#666}
.runs td{font-size:12px;padding:2px 5px} .runs td:nth-child(n+3){white-space:nowrap} .ok{color:#2a7d2a;font-weight:700} .bad{color:#b22;font-weight:700}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
#pager button{margin:0 6px}
</style></head><body>
<h1>LASER report</h1>
{{NOTES}}
<div id="overview">
{{TABLES}}
<h2>Figures</h2>
{{FIGURES}}
</div>
<h2>Samples</h2>
<div id="filters"></div>
<div id="pager"></div>
<div id="gallery"></div>
<div id="status"></div>
<script id="report-data" type="application/json">{{DATA}}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const FIELDS = ["dataset", "shown", "layer", "path", "outcome"];
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"})[c]); }
function metaKeys() {
  const values = {};
  for (const e of DATA.entries) for (const [k, v] of Object.entries(e.meta)) (values[k] = values[k] || new Set()).add(String(v));
  return Object.keys(values).filter(k => values[k].size > 1 && values[k].size <= 12).sort().map(k => [k, [...values[k]].sort()]);
}
const META = metaKeys();
function state() {
  const p = new URLSearchParams(location.hash.slice(1));
  const s = {page: Math.max(1, parseInt(p.get("page") || "1", 10) || 1), only: p.get("only") || ""};
  for (const f of FIELDS) s[f] = p.get(f) || "";
  for (const [k] of META) s["meta." + k] = p.get("meta." + k) || "";
  if (!(s.dataset in DATA.datasets)) s.dataset = Object.keys(DATA.datasets)[0] || "";
  if (!p.has("shown")) s.shown = "disagree";
  return s;
}
function setState(s) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(s)) if (v !== "" && !(k === "page" && v === 1)) p.set(k, v);
  location.hash = p.toString();
}
function options(values, current, all) {
  return [`<option value="">${esc(all)}</option>`].concat(values.map(([v, t]) =>
    `<option value="${esc(v)}"${String(v) === current ? " selected" : ""}>${esc(t)}</option>`)).join("");
}
function matches(e, s) {
  if (e.dataset !== s.dataset) return false;
  if (s.shown && s.shown !== "all" && e.shown !== s.shown) return false;
  if (s.layer !== "" && String(e.layer) !== s.layer) return false;
  if (s.path && String(e.path) !== s.path) return false;
  if (s.outcome && e.outcome !== s.outcome) return false;
  for (const [k] of META) { const v = s["meta." + k]; if (v && String(e.meta[k]) !== v) return false; }
  return true;
}
function filters(s) {
  const ds = DATA.datasets[s.dataset] || {runs: []};
  const inDs = DATA.entries.filter(e => e.dataset === s.dataset);
  const layers = [...new Set(inDs.map(e => e.layer).filter(v => v !== null))].sort((a, b) => a - b);
  const paths = [...new Set(inDs.map(e => e.path).filter(v => v))].sort();
  const focus = ds.focus || "focus", vanilla = ds.vanilla || "vanilla";
  let h = `<label>dataset <select data-key="dataset">${options(Object.keys(DATA.datasets).map(d => [d, d]), s.dataset, "-")}</select></label>`;
  h += `<label>samples <select data-key="shown">${options([["disagree", `answers differ (${ds.disagree})`], ["rest", `answers agree: random page (${ds.rest})`]], s.shown, "all shown")}</select></label>`;
  for (const [k, vals] of META) h += `<label>${esc(k)} <select data-key="meta.${esc(k)}">${options(vals.map(v => [v, v]), s["meta." + k], "all")}</select></label>`;
  h += `<label>chosen layer (${esc(focus)}) <select data-key="layer">${options(layers.map(v => [String(v), String(v)]), s.layer, "all")}</select></label>`;
  h += `<label>decode path (${esc(focus)}) <select data-key="path">${options(paths.map(v => [v, v]), s.path, "all")}</select></label>`;
  h += `<label>outcome <select data-key="outcome">${options([["focus_right", `${focus} right, ${vanilla} wrong`], ["vanilla_right", `${vanilla} right, ${focus} wrong`]], s.outcome, "all")}</select></label>`;
  const el = document.getElementById("filters");
  el.innerHTML = h;
  for (const sel of el.querySelectorAll("select")) sel.addEventListener("change", ev => {
    let next = state();
    if (ev.target.dataset.key === "dataset") {  // another dataset: its own filters start empty
      next = {page: 1, only: next.only, shown: next.shown};
    }
    next[ev.target.dataset.key] = ev.target.value; next.page = 1;
    if (ev.target.dataset.key === "shown" && ev.target.value === "") next.shown = "all";
    setState(next);
  });
}
function svg(e, runs) {
  if (!e.size) return "";
  const [w, h] = e.size.map(Number), lw = Math.max(w, h) / 160;
  let out = `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">`;
  e.runs.forEach((r, i) => {
    if (!r) return;
    for (const c of r.mask || []) { const m = c.map(Number); out += `<rect x="${m[0]}" y="${m[1]}" width="${m[2] - m[0]}" height="${m[3] - m[1]}" fill="#00e5ff" fill-opacity="0.35" stroke="none"/>`; }
    if (r.box) { const b = r.box.map(Number); out += `<rect x="${b[0]}" y="${b[1]}" width="${b[2] - b[0]}" height="${b[3] - b[1]}" fill="none" stroke="${runs[i].colour}" stroke-width="${lw}" stroke-dasharray="${i % 2 ? lw * 3 : 0}"><title>${esc(runs[i].label)}</title></rect>`; }
  });
  return out + "</svg>";
}
function card(e, runs) {
  const pic = e.thumb ? `<img src="${esc(e.thumb)}" alt="${esc(e.id)}" loading="lazy">${svg(e, runs)}`
                      : `<div class="missing">no image${e.note ? ": " + esc(e.note) : ""}</div>`;
  const meta = Object.entries(e.meta).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" · ");
  let rows = "";
  e.runs.forEach((r, i) => {
    if (!r) { rows += `<tr><td><span class="sw" style="background:${runs[i].colour}"></span>${esc(runs[i].label)}</td><td colspan="4">no record</td></tr>`; return; }
    const mark = r.score === null || r.score === undefined ? "" : (r.score >= 0.5 ? '<span class="ok">✓</span>' : '<span class="bad">✗</span>');
    const answer = r.error ? `<i>error: ${esc(String(r.error).slice(0, 80))}</i>` : esc(r.answer === null ? "–" : r.answer);
    rows += `<tr><td><span class="sw" style="background:${runs[i].colour}"></span>${esc(runs[i].label)}</td><td>${answer}</td><td>${mark}</td><td>${r.layer === null || r.layer === undefined ? "" : "l* " + Number(r.layer)}</td><td>${esc(r.path || "")}</td></tr>`;
  });
  const aspect = e.size ? ` style="aspect-ratio:${Number(e.size[0])}/${Number(e.size[1])}"` : "";
  return `<div class="card" data-id="${esc(e.id)}"><div class="pic"${aspect}>${pic}</div>
    <div class="q">${esc(e.question || "")}</div>
    <div class="meta">${esc(e.id)} · reference: ${esc(e.answers.join(" | ") || "–")}${meta ? " · " + meta : ""}</div>
    <table class="runs">${rows}</table></div>`;
}
function render() {
  const s = state();
  document.getElementById("overview").style.display = s.only === "samples" ? "none" : "";
  filters(s);
  const ds = DATA.datasets[s.dataset] || {runs: []};
  const shown = DATA.entries.filter(e => matches(e, s));
  const pages = Math.max(1, Math.ceil(shown.length / DATA.per_page));
  const page = Math.min(s.page, pages);
  const slice = shown.slice((page - 1) * DATA.per_page, page * DATA.per_page);
  document.getElementById("gallery").innerHTML = slice.map(e => card(e, ds.runs)).join("");
  document.getElementById("pager").innerHTML = `<span id="count">${shown.length}</span> samples · page ${page} of ${pages}` +
    `<button id="prev"${page <= 1 ? " disabled" : ""}>previous</button><button id="next"${page >= pages ? " disabled" : ""}>next</button>`;
  document.getElementById("prev").onclick = () => { const n = state(); n.page = page - 1; setState(n); };
  document.getElementById("next").onclick = () => { const n = state(); n.page = page + 1; setState(n); };
  const status = document.getElementById("status");
  status.dataset.matching = String(shown.length);
  status.dataset.cards = String(slice.length);
  status.dataset.rendered = "yes";
}
window.addEventListener("hashchange", render);
render();
</script></body></html>
"""
