"""Library layer shared by users, exporters and the zoo: masked layers and orderings (`masked`), flow
transforms and their protocol (`flows`), log-density constants and helpers (`density`, numpy only).

Importing the package imports nothing heavy; `masked` and `flows` need torch, `density` does not.
"""
