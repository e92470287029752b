"""Figures drawn from numbers that exist first in files (posterior files, summary tables)."""
