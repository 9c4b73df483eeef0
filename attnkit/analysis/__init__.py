"""Analysis of attention: the recorder, sparsity metrics, COCO evaluation, tables."""

from attnkit.analysis.metrics import RunningStats as RunningStats
from attnkit.analysis.metrics import attention_distance as attention_distance
from attnkit.analysis.metrics import entropy as entropy
from attnkit.analysis.metrics import gini as gini
from attnkit.analysis.metrics import support_size as support_size
from attnkit.analysis.metrics import zeros_ratio as zeros_ratio
from attnkit.analysis.paibb import paibb as paibb
from attnkit.analysis.recorder import AttentionRecorder as AttentionRecorder
