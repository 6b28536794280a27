"""Tests of splitmix.report (tables and figures from evaluation rows)."""
