"""The report's pages as self-contained HTML strings: inline CSS, images as base64 data URIs,
no JavaScript, no web fonts, no link outside the report folder (a page opens from a file, a
mail attachment or an artefact store, without a server or a network)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from typing import Any

from pseudolabel.data.ledger import Termination
from pseudolabel.report.data import SECTIONS, RoundReport, RoundSummary, SelectedItem

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#222;
background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
header{background:#1f2d3d;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:1.45em;font-weight:600}
header a{color:#cfe3ff}
header .meta{margin:4px 0 0;color:#b8c4d0;font-size:.85em}
nav.pager{margin-top:6px;font-size:.9em}
nav.pager a{margin-right:14px}
nav.toc{position:sticky;top:0;background:#f6f7f9;padding:8px 0;border-bottom:1px solid #dde;z-index:1;
font-size:.85em;display:flex;flex-wrap:wrap;gap:2px 14px}
nav.toc a{color:#2a5db0;text-decoration:none;white-space:nowrap}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:12px 18px;margin:16px 0}
section h2{margin:0 0 8px;font-size:1.15em}
.note{color:#666;font-size:.88em}
.warn{color:#8a5300}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}
.card{border:1px solid #e1e4e8;border-radius:6px;padding:8px 12px;min-width:120px;background:#fafbfc}
.card .v{font-size:1.35em;font-weight:600}
.card .k{font-size:.78em;color:#666}
.good{color:#1a7f37}.bad{color:#b42318}
table{border-collapse:collapse;font-size:.85em;margin:6px 0}
th,td{border-bottom:1px solid #eaecef;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}
td.num,th.num{text-align:right}
tr.new td{background:#fff6e0}
img.fig{max-width:100%;height:auto;display:block;margin:4px 0}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{margin:0;width:150px;font-size:.75em;border:1px solid #e1e4e8;border-radius:4px;padding:6px;
background:#fafbfc}
figure.thumb img{display:block;margin:0 auto 4px;image-rendering:pixelated;max-width:138px}
figure.thumb .missing{height:96px;display:flex;align-items:center;justify-content:center;color:#b42318;
text-align:center}
code{font-size:.9em;word-break:break-all}
.scroll{max-height:420px;overflow:auto}
"""

TITLES = {
    "summary": "Summary",
    "learning-curve": "Learning curve",
    "per-class": "Per-class scores over rounds",
    "confusion": "Confusion matrix",
    "label-sources": "Label sources over rounds",
    "reviews": "Reviewers: acceptance and corrections",
    "uncertainty": "Uncertainty of the pool",
    "embedding-map": "Map of the pool",
    "selected": "Selected for review",
    "quarantine": "Quarantined files",
}


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` (an image's bytes) as a base64 ``data:`` URI of type ``mime``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, *, mime: str = "image/png", cls: str = "fig") -> str:
    """An ``<img>`` tag that embeds ``data`` (a data URI), with alt text ``alt`` and CSS class ``cls``."""
    return f'<img class="{cls}" src="{data_uri(data, mime)}" alt="{escape(alt)}">'


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return escape(str(v))


def _page(title: str, header: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n<header>{header}</header>\n"
            f"<main>\n{body}\n</main>\n</body></html>\n")


def _section(sid: str, title: str, content: str) -> str:
    return f'<section id="{sid}">\n<h2>{escape(title)}</h2>\n{content}\n</section>\n'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, num: Sequence[int] = (),
           row_class: Sequence[str] | None = None) -> str:
    th = "".join(f'<th class="num">{escape(h)}</th>' if i in num else f"<th>{escape(h)}</th>"
                 for i, h in enumerate(head))
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        tds = "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _time(iso: str) -> str:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM:SS`` (the pages say UTC)."""
    return iso[:19].replace("T", " ")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _card(value: str, key: str, cls: str = "") -> str:
    return f'<div class="card"><div class="v {cls}">{value}</div><div class="k">{escape(key)}</div></div>'


def page_name(round_id: int) -> str:
    """File name of a round's page inside the report folder."""
    return f"round-{round_id:04d}.html"


def _metric_card(s: RoundSummary, metric: str, target: float) -> str:
    if s.metric is None:
        return _card("–", f"holdout {metric} (target {target:g})")
    cls = "good" if s.metric >= target else ""
    return _card(f"{s.metric:.4f}", f"holdout {metric} (target {target:g})", cls)


def round_page(r: RoundReport, figures: dict[str, bytes], thumbs: Sequence[tuple[SelectedItem, bytes | None, str]],
               *, neighbours: tuple[int | None, int | None], seconds_note: str = "") -> str:
    """The page of one round. ``figures``: PNG bytes by name (``learning_curve``, ``per_class``,
    ``confusion``, ``per_class_bars``, ``sources``, ``reviews``, ``uncertainty``, ``map``);
    ``thumbs``: each shown selected item with its image bytes (None: unreadable, the third
    element then says why) or its mime type; ``neighbours``: previous / next round ids with a
    page, or None."""
    s = r.round
    prev, nxt = neighbours
    pager = ['<a href="index.html">all rounds</a>']
    if prev is not None:
        pager.append(f'<a href="{page_name(prev)}">&larr; round {prev}</a>')
    if nxt is not None:
        pager.append(f'<a href="{page_name(nxt)}">round {nxt} &rarr;</a>')
    header = (f"<h1>{escape(r.project)} — round {s.round_id}</h1>"
              f'<p class="meta">{escape(r.task)} · {len(r.classes)} classes · round {escape(s.status)} · '
              f"started {escape(_time(s.started_at))} UTC · report generated {escape(_time(r.generated_at))} UTC"
              f"{escape(seconds_note)} · workdir <code>{escape(str(r.workdir))}</code></p>"
              f'<nav class="pager">{" ".join(pager)}</nav>')
    toc = '<nav class="toc">' + "".join(f'<a href="#{sid}">{escape(TITLES[sid])}</a>' for sid in SECTIONS) + "</nav>"
    parts = [toc, _summary(r), _learning(r, figures), _per_class(r, figures), _confusion(r, figures),
             _sources(r, figures), _reviews(r, figures), _uncertainty(r, figures), _map(r, figures),
             _selected(r, thumbs), _quarantine(r)]
    return _page(f"{r.project} — round {s.round_id}", header, "\n".join(parts))


def _summary(r: RoundReport) -> str:
    s = r.round
    cards = [_metric_card(s, r.metric_name, r.target), _card(_f(s.labels_used), "labels used (seed + human)"),
             _card(_f(s.pseudo_used), "pseudo-labels in training"), _card(_f(s.selected), "selected for review"),
             _card(_f(s.queued), "new tasks in Label Studio")]
    out = '<div class="cards">' + "".join(cards) + "</div>"
    if s.stop:
        out += f'<p class="warn"><b>The campaign stopped at this round:</b> {escape(s.stop)}</p>'
    elif r.termination and r.termination.get("round", 0) > s.round_id:
        out += (f'<p class="note">Later stopped at round {r.termination["round"]}: '
                f'{escape(str(r.termination["reason"]))}</p>')
    scalars = [(k, v) for k, v in s.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if scalars:
        out += _table(["holdout metric", "value"], [(escape(k), _f(v)) for k, v in scalars], num=(1,))
    out += f'<p class="note">model version <code>{escape(s.model_version or "–")}</code></p>'
    return _section("summary", TITLES["summary"], out)


def _learning(r: RoundReport, figures: dict[str, bytes]) -> str:
    rows = [(f"r{h.round_id}", _f(h.labels_used), _f(h.pseudo_used), _f(h.metric)) for h in r.history]
    body = (img(figures["learning_curve"], f"holdout {r.metric_name} against labels used, round by round")
            + f'<p class="note">One point per round: the model trained on that many seed + human labels, '
              f"scored on the human-verified holdout. The dashed line is <code>stop.target</code> "
              f"({r.target:g}); the campaign stops once the curve reaches it.</p>"
            + _table(["round", "labels used", "pseudo-labels", f"holdout {r.metric_name}"], rows, num=(1, 2, 3)))
    return _section("learning-curve", TITLES["learning-curve"], body)


def _per_class(r: RoundReport, figures: dict[str, bytes]) -> str:
    title = f"Per-class {r.per_class_name} over rounds"
    if "per_class" not in figures:
        return _section("per-class", title, '<p class="note">no per-class scores recorded yet</p>')
    return _section("per-class", title, img(figures["per_class"], f"per-class {r.per_class_name} by round")
                    + f'<p class="note">Holdout {escape(r.per_class_name)} of each class (rows) in each round '
                      "(columns); n/a: the class is absent from the holdout and the predictions.</p>")


def _confusion(r: RoundReport, figures: dict[str, bytes]) -> str:
    if r.confusion is not None:
        worst = []
        m = r.confusion
        for i, t in enumerate(r.classes):
            for j, p in enumerate(r.classes):
                if i != j and m[i, j]:
                    worst.append((int(m[i, j]), t, p))
        worst.sort(reverse=True)
        top = _table(["true", "predicted as", "holdout items"],
                     [(escape(t), escape(p), _f(n)) for n, t, p in worst[:10]], num=(2,)) if worst else ""
        return _section("confusion", TITLES["confusion"],
                        img(figures["confusion"], "confusion matrix of the holdout")
                        + f'<p class="note">{r.holdout_n:,} holdout items; rows are the true class, colour is the '
                          "share of that class, numbers are counts. Most frequent confusions:</p>" + top)
    body = f'<p class="note">{escape(r.confusion_note)}</p>'
    if "per_class_bars" in figures:
        body += img(figures["per_class_bars"], f"per-class {r.per_class_name} of this round")
    title = TITLES["confusion"] + (" (detection: per-class AP instead)" if r.task != "classify" else "")
    return _section("confusion", title, body)


def _sources(r: RoundReport, figures: dict[str, bytes]) -> str:
    rows = [(f"r{c.round_id}", _f(c.seed), _f(c.human), _f(c.consensus), _f(c.pseudo)) for c in r.sources]
    body = (img(figures["sources"], "labelled items by label source per round")
            + '<p class="note">Labelled items at the end of each round, each counted once by the source of its '
              "current label (human beats seed beats pseudo). Human answers count from the round whose review "
              "queue they answered; <i>consensus</i> are items whose label several reviewers' votes decided; "
              "pseudo-labels are the confident predictions that round kept for training.</p>"
            + _table(["round", "seed", "human", "consensus", "pseudo"], rows, num=(1, 2, 3, 4)))
    return _section("label-sources", TITLES["label-sources"], body)


def _reviews(r: RoundReport, figures: dict[str, bytes]) -> str:
    rows = [(f"r{c.round_id}", _f(c.accepted), _f(c.corrected), _f(c.skipped), _f(c.consensus),
             "–" if c.acceptance is None else f"{c.acceptance:.0%}") for c in r.reviews]
    chart = img(figures["reviews"], "reviewers' answers per review queue") if "reviews" in figures else ""
    body = (chart
            + '<p class="note">Answers to each round\'s review queue (they come back in the next round\'s sync, '
              "so the latest queue is usually still open). Acceptance = accepted / (accepted + corrected): "
              "how often the pre-drawn prediction was right.</p>"
            + _table(["queue of round", "accepted", "corrected", "skipped", "consensus decisions", "acceptance"],
                     rows, num=(1, 2, 3, 4, 5)))
    if r.reviewers:
        body += "<h3>Reviewers</h3>" + _table(["reviewer", "answers"],
                                             [(escape(k), _f(v)) for k, v in r.reviewers.items()], num=(1,))
    if r.correction_pairs:
        body += ("<h3>What reviewers changed</h3>"
                 + _table(["model suggested", "reviewer answered", "times"],
                          [(escape(p), escape(a), _f(n)) for p, a, n in r.correction_pairs[:15]], num=(2,)))
    if r.corrections:
        more = (f'<p class="note">the {len(r.corrections):,} latest of {r.corrections_total:,} corrections</p>'
                if r.corrections_total > len(r.corrections) else "")
        rows2 = [(f"r{c.round_id}", escape(c.predicted or "?"), escape(c.answer), escape(c.reviewer or "?"),
                  f"<code>{escape(c.path)}</code>") for c in r.corrections]
        body += ("<h3>Corrections, newest first</h3>" + more
                 + '<div class="scroll">' + _table(["queue", "model", "reviewer", "by", "file"], rows2) + "</div>")
    elif not any(c.answered or c.skipped for c in r.reviews):
        body += '<p class="note">No reviewer answer in the ledger yet.</p>'
    return _section("reviews", TITLES["reviews"], body)


def _uncertainty(r: RoundReport, figures: dict[str, bytes]) -> str:
    if r.pool is None:
        return _section("uncertainty", TITLES["uncertainty"], f'<p class="note">{escape(r.pool_note)}</p>')
    u = r.pool.uncertainty
    sel = r.pool.selected
    stats = (f"{len(u):,} pool items scored; mean {u.mean():.3f}, median {float(_median(u)):.3f}"
             + (f"; selected items: mean {u[sel].mean():.3f}" if sel.any() else ""))
    return _section("uncertainty", TITLES["uncertainty"],
                    img(figures["uncertainty"], "histogram of the pool's uncertainty")
                    + f'<p class="note">{escape(stats)}. Uncertainty = {escape(r.pool.uncertainty_name)} of the '
                      "round's model on each pool item; in red the items it picked for review (the strategy may "
                      "also weigh diversity, so they need not be the rightmost).</p>")


def _median(a: Any) -> float:
    import numpy as np

    return float(np.median(a)) if len(a) else float("nan")


def _map(r: RoundReport, figures: dict[str, bytes]) -> str:
    if r.pool is None:
        return _section("embedding-map", TITLES["embedding-map"], f'<p class="note">{escape(r.pool_note)}</p>')
    if "map" not in figures:
        return _section("embedding-map", TITLES["embedding-map"], f'<p class="note">{escape(r.pool.map_note)}</p>')
    note = "PCA of the model's embeddings of the pool (2 components), coloured by predicted class; " \
           "black rings: the items selected for review."
    if r.pool.map_note:
        note += " " + r.pool.map_note + "."
    return _section("embedding-map", TITLES["embedding-map"],
                    img(figures["map"], "2-D map of the pool embeddings") + f'<p class="note">{escape(note)}</p>')


def _selected(r: RoundReport, thumbs: Sequence[tuple[SelectedItem, bytes | None, str]]) -> str:
    if not thumbs:
        if r.selected_total:
            why = f"{_n(r.selected_total, 'item')} selected; thumbnails are off (report.max_thumbnails is 0)"
        elif r.round.selected is not None:
            why = "this round selected nothing"
        else:
            why = "this round has no selection (it stopped before the select stage)"
        return _section("selected", TITLES["selected"], f'<p class="note">{why}</p>')
    figs = []
    for it, data, extra in thumbs:
        pic = (img(data, f"item {it.item_id[:12]}", mime=extra, cls="") if data is not None
               else f'<div class="missing">cannot read image:<br>{escape(extra)}</div>')
        pred = escape(it.predicted or "no box")
        lines = [f"<b>#{it.rank + 1}</b> predicted <b>{pred}</b> ({it.confidence:.2f})",
                 f"score {it.score:.3f}"]
        if it.boxes:
            lines.append(f"{len(it.boxes)} boxes predicted")
        if it.answer is not None:
            cls = "good" if it.outcome == "accepted" else ("bad" if it.outcome == "corrected" else "")
            lines.append(f'reviewer: <span class="{cls}">{escape(it.answer)}</span> ({escape(it.outcome or "?")})')
        lines.append(f'<code title="{escape(str(it.path))}">{escape(it.path.name)}</code>')
        figs.append(f'<figure class="thumb">{pic}<figcaption>{"<br>".join(lines)}</figcaption></figure>')
    note = (f"The {len(thumbs)} first of {r.selected_total:,} selected items, in review order"
            if r.selected_total > len(thumbs) else f"All {len(thumbs)} selected items, in review order")
    note += ": the model's prediction (pre-drawn in Label Studio), its confidence and the selection score " \
            "(higher = more uncertain)."
    if r.task != "classify":
        note += " Boxes drawn: the predictions at least selection.predraw_conf confident (what reviewers see)."
    return _section("selected", TITLES["selected"],
                    f'<p class="note">{escape(note)}</p><div class="thumbs">{"".join(figs)}</div>')


def _quarantine(r: RoundReport) -> str:
    if not r.quarantine:
        return _section("quarantine", TITLES["quarantine"], '<p class="note">No file has been quarantined.</p>')
    new = sum(q.new for q in r.quarantine)
    rows = [(f"<code>{escape(q.path)}</code>", escape(q.reason), escape(_time(q.time))) for q in r.quarantine[:1000]]
    more = " (the first 1,000 listed)" if len(r.quarantine) > 1000 else ""
    return _section("quarantine", TITLES["quarantine"],
                    f'<p class="note">{_n(len(r.quarantine), "file")} could not be used{more}; {new} of them '
                    "quarantined while this round ran (highlighted). Source: "
                    f"<code>{escape(str(r.workdir / 'quarantine.csv'))}</code>.</p>"
                    + '<div class="scroll">'
                    + _table(["file", "reason", "time (UTC)"], rows,
                             row_class=["new" if q.new else "" for q in r.quarantine[:1000]]) + "</div>")


def index_page(project: str, task: str, metric: str, target: float, history: Sequence[RoundSummary],
               pages: set[int], *, curve: bytes | None, termination: Termination | None,
               generated_at: str, labels_by_source: dict[str, int]) -> str:
    """The index: headline figures, the learning curve and one row per round (linked when its
    page is in the folder)."""
    last = history[-1] if history else None
    evaluated = [h for h in history if h.metric is not None]
    best = max(evaluated, key=lambda h: h.metric or 0.0) if evaluated else None
    cards = []
    if last is not None:
        cards.append(_card(str(last.round_id), "rounds run"))
        cards.append(_metric_card(evaluated[-1] if evaluated else last, metric, target).replace(
            "holdout", "latest holdout", 1))
        if best is not None:
            cards.append(_card(f"{best.metric:.4f}", f"best {metric} (round {best.round_id})"))
        cards.append(_card(_f(last.labels_used), "labels used"))
    cards += [_card(_f(n), f"{k} labels now") for k, n in labels_by_source.items()]
    body = '<section id="headline"><h2>Headline</h2><div class="cards">' + "".join(cards) + "</div>"
    if termination:
        body += (f'<p class="warn"><b>Stopped at round {termination.get("round")}:</b> '
                 f'{escape(str(termination.get("reason")))}</p>')
    else:
        body += '<p class="note">The campaign has not stopped: the next scheduled round continues it.</p>'
    body += "</section>"
    if curve is not None:
        body += _section("learning-curve", TITLES["learning-curve"], img(curve, "learning curve"))
    rows = []
    for h in reversed(list(history)):
        link = (f'<a href="{page_name(h.round_id)}">round {h.round_id}</a>' if h.round_id in pages
                else f"round {h.round_id} <span class=\"note\">(no page: run <code>pseudolabel report</code>)</span>")
        rows.append((link, escape(h.status), escape(_time(h.started_at)[:16]), _f(h.labels_used),
                     _f(h.pseudo_used), _f(h.metric), _f(h.selected), _f(h.queued), escape(h.stop or "")))
    body += _section("rounds", "Rounds", _table(
        ["round", "status", "started (UTC)", "labels used", "pseudo", f"holdout {metric}", "selected", "queued",
         "stop"], rows, num=(3, 4, 5, 6, 7)) if rows else '<p class="note">no round yet</p>')
    header = (f"<h1>{escape(project)} — labelling report</h1>"
              f'<p class="meta">{escape(task)} · target {escape(metric)} ≥ {target:g} · generated '
              f"{escape(_time(generated_at))} UTC</p>")
    return _page(f"{project} — labelling report", header, body)
