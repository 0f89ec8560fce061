"""genrec: generative recommendation with semantic IDs and memorization-aware fusion."""

import logging

from genrec.data import DataFormatError, ItemText, SequenceDataset, load_plain, write_plain
from genrec.datasets import load_dataset
from genrec.metrics import metrics_from_ranks, ranks_from_scores, ranks_from_topk
from genrec.recommender import Explanation, Recommendations, Recommender
from genrec.splits import Instances, LeaveOneOutSplit, leave_one_out
from genrec.synthetic import make_synthetic

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "DataFormatError", "ItemText", "SequenceDataset", "load_plain", "write_plain",
    "metrics_from_ranks", "ranks_from_scores", "ranks_from_topk",
    "Instances", "LeaveOneOutSplit", "leave_one_out",
    "load_dataset", "make_synthetic", "Recommender", "Recommendations", "Explanation",
]
