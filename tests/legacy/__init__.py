"""A frozen copy of stage 1's and stage 2's sampling code as it was before the one-sampler refactor (issue 13).

Kept only so that tests/test_sampler.py can prove the new sampler bit-identical to the old loops on the tiny
models. Nothing in src/ imports it; delete it with that test once the equivalence is no longer of interest.
The core/ helpers it calls (split_prediction, ddim_step, RASG's functions, blending) are unchanged.
"""
