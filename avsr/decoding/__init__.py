"""Decoding: greedy CTC, the batched joint CTC/attention beam search and its unbatched reference.

enc = model.encode(video, video_lengths, audio, audio_lengths, modality="av")
ids = greedy_ctc(enc["ctc_log_probs"], enc["enc_lengths"], eos=model.eos)
hyps = beam_search(model, enc, beam_size=10, ctc_weight=0.1, nbest=1)   # list (B) of lists of Hypothesis
text = tokens.decode(hyps[0][0].tokens)
"""

from avsr.decoding.beam_search import beam_search, joint_beam_search
from avsr.decoding.ctc_prefix import CtcPrefixScorer, CtcPrefixState
from avsr.decoding.greedy import greedy_ctc
from avsr.decoding.hypothesis import Hypothesis
from avsr.decoding.reference import beam_search_reference

__all__ = [
    "CtcPrefixScorer",
    "CtcPrefixState",
    "Hypothesis",
    "beam_search",
    "beam_search_reference",
    "greedy_ctc",
    "joint_beam_search",
]
