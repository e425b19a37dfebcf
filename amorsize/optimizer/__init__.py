"""Deciding how to run a function over its data.

``optimize`` checks the arguments and measures a few items (``sampling``, through the one
``probe`` every front end uses); ``decision`` turns the profile into a plan with the
``cost_model``, the pools' measured ``overheads`` and what ``learned`` holds from earlier runs.
"""
