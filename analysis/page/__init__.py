"""The report's web page: `report/index.html`, one self-contained file (Plotly's
JavaScript, the page's own script and every record it shows inlined; no network, no
server) in which the phase diagram can be walked: other axes sliced or pooled, a cell's
metrics and distance to each threshold on hover, its models' curves on click, and the
four thresholds moved live with the classifier of `analysis.phases` ported rule for rule
(`app.js`; tests/test_report_page.py holds the two to the same answer in Chromium)."""

from analysis.page.html import write_page

__all__ = ["write_page"]
