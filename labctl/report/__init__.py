"""Reports over many pairs: JUnit, summary.md, report.html, diffs between nights, history."""
