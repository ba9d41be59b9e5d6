"""placeholder"""
def load(info):
    return None
