"""GPT Server benchmark: a load generator, paired A/B runs and reports (issues 4 and 23).

Not part of the installed package and not a test suite: run it from a source
checkout with ``python -m bench`` or ``gpt-server bench``.
"""
