"""Sites, the sample contract, file validation, the crop cache and the leakage audit.

This package knows folders, labels, bad files and hashes. It never imports
TensorFlow. It is named ``datasets`` like the Hugging Face package; see
README ("A note on the name ``datasets``").
"""
#: Marks this package, so code can tell it from the Hugging Face package of the same name.
BRAINMRI_DATASETS = True

from datasets.records import BadFile, Sample, check_site_name, NO_TUMOUR, TUMOUR

__all__ = ["BadFile", "Sample", "check_site_name", "NO_TUMOUR", "TUMOUR"]
