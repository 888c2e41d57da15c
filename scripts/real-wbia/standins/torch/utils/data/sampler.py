class Sampler:
    def __init__(self, data_source=None):
        pass
