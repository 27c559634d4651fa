import os

from hypothesis import settings

# Tests never touch the network: reference libraries run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

settings.register_profile("lmkit", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("lmkit")
