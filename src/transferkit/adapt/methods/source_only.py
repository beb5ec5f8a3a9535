"""Source-only: plain fine-tuning on the labelled source, the baseline every method is compared with."""

from ..base import Method, register_method


@register_method("source-only")
class SourceOnly(Method):
    description = "fine-tune on the source alone (the baseline)"
