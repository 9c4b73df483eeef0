"""Attention normalizers, the multi-head attention core and the token mixers built on it.

This sub-package imports nothing else from attnkit.
"""

from attnkit.attention import hooks as hooks
from attnkit.attention.core import attend as attend
from attnkit.attention.core import key_padding_to_mask as key_padding_to_mask
from attnkit.attention.core import merge_masks as merge_masks
from attnkit.attention.hooks import AttentionModule as AttentionModule
from attnkit.attention.layout import KeyLayout as KeyLayout
from attnkit.attention.multihead import MultiheadAttention as MultiheadAttention
from attnkit.attention.normalizers import NORMALIZER_NAMES as NORMALIZER_NAMES
from attnkit.attention.normalizers import alpha_values as alpha_values
from attnkit.attention.normalizers import get_normalizer as get_normalizer
from attnkit.attention.normalizers import make_normalizer as make_normalizer
from attnkit.attention.self_attention import SelfAttention as SelfAttention
