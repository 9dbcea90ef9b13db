"""The reconstruction demo in the browser (``python -m mae.demo``, ``make demo``).

``images`` turns a user's file into the model's input, ``reconstruction`` computes one update's views,
``session`` holds the server's state without Gradio, ``app`` lays out the Gradio page. Gradio is imported by
``app`` only (the optional ``[demo]`` extra).
"""
