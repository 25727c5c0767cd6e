"""Teachers: heavy or offline models that label a profile's recordings.

Mask teachers (SAM 2.1, the bundled selfie segmenter, the clean-plate
difference) and pose teachers (ViTPose, the bundled pose model) share one small
interface (`base.py`); `combine.py` builds them from a profile and fuses votes.
"""
