import os

# tests run several engine processes on few cores: keep each one small
os.environ.setdefault("GPT_SERVER_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
