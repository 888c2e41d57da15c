"""torch.cuda stand-in: no GPU."""


def is_available():
    return False


def device_count():
    return 0


def empty_cache():
    pass
