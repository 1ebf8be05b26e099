"""The app's side of serving: what the Gradio app (app.py) needs and the installable package does not."""
