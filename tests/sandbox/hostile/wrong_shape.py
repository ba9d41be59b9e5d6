# expect: bad-output
"""Returns the transpose."""
OP = "matmul"


def run(a, b):
    return (a @ b).T.copy()
