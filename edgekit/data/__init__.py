"""Offline data sets (no downloads at run time). Light: loaders import numpy only when called."""
