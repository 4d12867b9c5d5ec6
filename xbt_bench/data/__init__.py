"""Datasets (toy world, CLIP_benchmark sets, webdatasets, folders) and text corpora."""

from .base import ImageTextSet, TextCorpus
from .registry import datasets, load_dataset, load_text_corpus, split_data_ref

__all__ = [
    "ImageTextSet",
    "TextCorpus",
    "datasets",
    "load_dataset",
    "load_text_corpus",
    "split_data_ref",
]
