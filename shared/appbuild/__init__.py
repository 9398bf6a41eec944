"""App builds: from a brief to the files of a static site, checked before they are published."""
