"""MSCL Workbench: a Streamlit app to see what the multi-scale and cross-scale contrastive losses changed.

Run with ``streamlit run app.py`` (runs folder: ``sample_data/runs`` next to this file), or point it at
other runs with ``streamlit run app.py -- --runs results/camvid`` or the ``MSCL_RUNS`` environment
variable. Every number and figure comes from the ``workbench`` package; the pages only compose them.
"""

from __future__ import annotations

import streamlit as st

from app_pages import common

st.set_page_config(page_title="MSCL Workbench", page_icon=":material/hub:", layout="wide")

navigation = st.navigation([*(page.as_st_page() for page in common.PAGES),
                            st.Page("app_pages/study.py", title="Study", icon=":material/analytics:", url_path="study"),
                            st.Page("app_pages/dynamics.py", title="Training dynamics", icon=":material/timeline:",
                                    url_path="dynamics")])
common.render_sidebar()
navigation.run()
