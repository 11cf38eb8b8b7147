"""Evaluation on labelled datasets: readers (published formats), runner (settings over the
same records), metrics (pure functions) and report (table, JSON, Markdown, plots)."""
