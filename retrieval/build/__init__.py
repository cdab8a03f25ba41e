"""The build: catalog + interactions -> trained DGMRec -> completed features -> index bundle, and the
appending of new items to a bundle (DESIGN.md, "Parts")."""
