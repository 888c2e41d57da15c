enabled = False
