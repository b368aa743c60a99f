"""The plug-in's GIMP and GTK side, beside neural_style.py: reading and writing the image
(images), the live preview layer (preview), the window (window) and its test hook (script).
Everything that needs neither GIMP nor GTK is in nst_client."""
