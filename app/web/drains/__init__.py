"""The drains area: running and paused drains with their live progress, pause, resume and
cancel, past drains with how long each took, and the release of held mail by hand."""
