"""The stylesheet of `babysit report`: one constant, inlined into the HTML (the file loads nothing).

Kept apart from monitor/report.py so that the page's structure (report.py) and its look (here) can be read and
changed on their own. Our own text: nothing from a run ever goes into it.
"""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--bg:#f6f8fa;--crit:#b42318;--critbg:#fef3f2;
--warn:#b54708;--warnbg:#fffaeb;--info:#175cd3;--infobg:#eff8ff;--ok:#067647;--okbg:#ecfdf3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 48px}
header{background:#fff;border:1px solid var(--line);border-radius:10px;padding:20px 24px;margin-bottom:16px}
.kicker{text-transform:uppercase;letter-spacing:.08em;font-size:11px;color:var(--muted);font-weight:600}
h1{margin:2px 0 2px;font-size:26px;word-break:break-all}
h2{font-size:18px;margin:28px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:14px 0 8px}
.where{margin:0 0 10px;color:var(--muted);word-break:break-all}
.why{margin:8px 0 0;color:var(--crit);word-break:break-word}
.badges{display:flex;gap:8px;flex-wrap:wrap}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;font-weight:600;border:1px solid}
.state-finished{color:var(--ok);background:var(--okbg);border-color:#abefc6}
.state-running{color:var(--info);background:var(--infobg);border-color:#b2ddff}
.state-stopped{color:var(--warn);background:var(--warnbg);border-color:#fedf89}
.state-crashed{color:var(--crit);background:var(--critbg);border-color:#fecdca}
.state-unknown{color:var(--muted);background:#fff;border-color:var(--line)}
.verdict-ok{color:var(--ok);background:var(--okbg);border-color:#abefc6}
.verdict-warn{color:var(--warn);background:var(--warnbg);border-color:#fedf89}
.verdict-bad{color:var(--crit);background:var(--critbg);border-color:#fecdca}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:var(--muted)}.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card .s{font-size:12px;color:var(--muted);min-height:1em}
.card-bad{border-color:#fecdca;background:var(--critbg)}.card-bad .v{color:var(--crit)}
h3.group{display:flex;align-items:center;gap:8px;margin-top:18px}
.count{font-size:12px;font-weight:600;background:#eaeef2;border-radius:999px;padding:0 8px;color:var(--muted)}
h3.sev-critical{color:var(--crit)}h3.sev-warning{color:var(--warn)}h3.sev-info{color:var(--info)}
.finding{background:#fff;border:1px solid var(--line);border-left:5px solid var(--info);border-radius:8px;
padding:12px 16px;margin:10px 0}
.finding.sev-critical{border-left-color:var(--crit)}.finding.sev-warning{border-left-color:var(--warn)}
.fhead{display:flex;align-items:baseline;gap:10px;flex-wrap:wrap}
.fhead h3{margin:0;font-size:15px}
.sev{text-transform:uppercase;font-size:11px;font-weight:700;letter-spacing:.05em;padding:1px 7px;border-radius:4px;
background:var(--infobg);color:var(--info)}
.sev-critical .sev{background:var(--critbg);color:var(--crit)}
.sev-warning .sev{background:var(--warnbg);color:var(--warn)}
.rule{font-size:12px;color:var(--muted)}.at{margin-left:auto;color:var(--muted);font-size:12px}
.tag{font-size:11px;border:1px solid var(--line);border-radius:4px;padding:0 6px;color:var(--muted)}
.msg{margin:8px 0;word-break:break-word}
.fix{background:var(--bg);border-radius:6px;padding:8px 12px;margin:8px 0}
.fix .lbl{font-size:12px;font-weight:600;color:var(--muted)}.fix ol{margin:4px 0 0;padding-left:20px}
.evidence summary{cursor:pointer;font-size:12px;color:var(--muted);font-weight:600}
.evidence table,.kv{border-collapse:collapse;font-size:12.5px;margin-top:4px}
.evidence th,.evidence td,.kv th,.kv td{text-align:left;padding:2px 12px 2px 0;vertical-align:top;
font-variant-numeric:tabular-nums;word-break:break-word}
.evidence th,.kv th{color:var(--muted);font-weight:500;white-space:nowrap}
.allclear{background:var(--okbg);border:1px solid #abefc6;color:var(--ok);border-radius:8px;padding:12px 16px;
font-weight:600}
.problem{background:var(--warnbg);border:1px solid #fedf89;border-radius:8px;padding:8px 12px;margin:8px 0}
.skipped{background:#fff;border:1px dashed var(--line);border-radius:8px;padding:4px 16px 12px;margin-top:16px}
table.plain{border-collapse:collapse;width:100%;font-size:13px}
table.plain th,table.plain td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
table.plain th{color:var(--muted);font-weight:600}.r{text-align:right}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}
.fig{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0;padding:10px 12px 8px}
.fig figcaption{font-weight:600;margin-bottom:4px}
svg.chart{width:100%;height:auto;display:block}
svg .tick{font-size:11px;fill:#59636e}svg .axis{font-size:11.5px;fill:#59636e}
svg .ref,svg .bad{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg .ref{font-size:10.5px;fill:#59636e}svg .bad{font-size:11px;fill:#d62728;font-weight:600}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 14px;margin:4px 0 0;padding:0;font-size:12px}
.legend li{display:flex;align-items:center;gap:5px;word-break:break-all}
.sw{display:inline-block;width:16px;height:3px;background:var(--c);border-radius:2px}
.sw-pt{height:8px;width:8px;border-radius:50%}
.sw-dash{background:repeating-linear-gradient(90deg,var(--c) 0 5px,transparent 5px 8px)}
.note{font-size:12px;color:var(--muted);margin:4px 0 0}.muted{color:var(--muted)}
.snaps{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-end}
.snap{margin:0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px;text-align:center}
.snap img{image-rendering:pixelated;image-rendering:crisp-edges;display:block;margin:0 auto}
.snap figcaption{font-size:12px;color:var(--muted);margin-top:6px}.snap .bad{color:var(--crit);font-size:12px}
.snap .s{font-size:11px;color:var(--muted)}.nopic{width:160px;height:120px;display:flex;align-items:center;
justify-content:center;color:var(--muted);background:var(--bg)}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:16px}
.two>div{background:#fff;border:1px solid var(--line);border-radius:8px;padding:4px 16px 12px}
details>summary{cursor:pointer}
#details details{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 16px;margin-top:16px}
.notes{margin:8px 0;padding-left:18px;font-size:12.5px;color:var(--muted)}
.box{background:#fff;border:1px solid var(--line);border-radius:8px;padding:4px 16px 12px;margin-bottom:16px}
.kvgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:2px 18px;font-size:12.5px}
.kvc{display:flex;justify-content:space-between;gap:8px;border-bottom:1px dotted #e4e8ec;padding:2px 0;min-width:0}
.kvc .k{color:var(--muted)}.kvc .v{font-variant-numeric:tabular-nums;text-align:right;word-break:break-all}
footer{color:var(--muted);font-size:12px;margin-top:32px;text-align:center}
@media print{body{background:#fff}.fig,.finding,header{break-inside:avoid}}
"""
