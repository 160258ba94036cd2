import { mount } from 'svelte';
import '@xterm/xterm/css/xterm.css';
import './app.css';
import App from './App.svelte';
import { applyTheme, loadUiSettings } from './lib/theme';

applyTheme();
mount(App, { target: document.getElementById('app')! });
void loadUiSettings();
