"""A third app, added to the lab by a day-2 run: built from this source folder by playbooks/wheelhouse.yml."""
