"""Tools outside the core: the MVTec AD downloader and the synthetic demo data generator."""
