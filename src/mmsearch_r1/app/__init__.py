"""The web app (`mmsearch-r1 app`, docs/app.md): Ask (one question through the agent loop, streamed) and Runs
(a run directory's curves and saved trajectories). `view` and `runs` are pure; the Gradio layer is in
`ask_tab`, `runs_tab` and `server` (Gradio is imported only there, from the `app` extra)."""
