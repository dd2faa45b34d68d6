"""Flows that span the stages (training -> export -> calibration), above them all: each imports the stage it
calls, where it calls it. The stages never import a pipeline."""
