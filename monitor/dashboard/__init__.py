"""The live dashboard (`babysit dashboard`): a Streamlit app over a folder of runs.

app.py is the Streamlit script; state.py keeps what it has read between refreshes (in st.cache_resource);
downsample.py keeps long series small enough to chart without losing spikes or NaN steps; charts.py builds
the Altair charts as pure functions; views.py puts them together for a run; ../fastread.py parses step records
in C. (benchmarks/synthetic.py writes runs in the real format for the benchmark and tests.)
"""
