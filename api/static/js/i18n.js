// The page's words in English and Spanish: the browser's language first, switchable (the
// choice is kept in this browser). `{name}` in a text is filled from `t`'s second argument.

const TEXTS = {
  en: {
    title: "alma", welcome: "Open alma", apiKey: "API key", open: "Open",
    keyHelp: "Paste the API key `alma serve` printed (or `alma keys create --tenant NAME`). It stays in this tab only.",
    keyRefused: "alma refused this API key: it is unknown or revoked. Paste a valid key.",
    unreachable: "alma cannot be reached at {origin}. Is `alma serve` running? Nothing was changed.",
    serverDown: "alma answered with an error ({status}). Try again in a moment.",
    retry: "Try again", forgetKey: "Forget key", language: "Language", sections: "Sections",
    noSuchPage: "There is no such page.", characters: "Characters", lorebooks: "Lorebooks",
    newCharacter: "New character", more: "More", search: "Search", searchCharacters: "Search characters",
    noCharacters: "No characters yet: create one or drop a Character Card here.", noMatch: "No character matches.",
    importCard: "Import a Character Card (PNG, JSON or CHARX)", dropHint: "or drop the file here",
    instances: "Instances", edit: "Edit", exportArchive: "Export or archive", name: "Name",
    description: "Description", personality: "Personality", scenario: "Scenario", greeting: "Greeting",
    example_dialogue: "Example dialogue", system_prompt: "System prompt",
    post_history_instructions: "Post-history instructions", creator_notes: "Creator notes",
    creator: "Creator", character_version: "Character version", nickname: "Nickname",
    alternate_greetings: "Alternate greetings", greetingsHint: "One after another, separated by a line with ---",
    tags: "Tags", tagsHint: "Separated by commas", voice: "Voice", voiceLanguage: "Language (es, en-US…)",
    voiceEngine: "Engine", voiceName: "Voice", voiceSpeed: "Speed (0.25–4)", default: "Default",
    save: "Save", saved: "Saved.", create: "Create", export: "Export", format: "Format", archive: "Archive",
    archiveCharacterQ: "Archive {name}? It stops being listed; its history stays.",
    archiveInstanceQ: "Archive {name}? It stops being listed and chatting; its history stays.",
    archiveLorebookQ: "Archive {name}? It stops being used in prompts; its history stays.",
    eraseInstanceQ: "Erase {name} for good? Its memories and conversation are destroyed. This cannot be undone.",
    erase: "Erase", eraseForGood: "Erase for good", cancel: "Cancel", manage: "Manage", rename: "Rename",
    noInstances: "No instances yet.", newInstance: "New instance", memoryText: "Memory text",
    userName: "Your name in the chat", userNameHint: "The card's {{user}}; empty: User",
    forkedFrom: "forked from version {version}", views: "Views", chat: "Chat", memory: "Memory", history: "History",
    conversation: "Conversation", earlier: "Earlier messages", message: "Message", send: "Send", stop: "Stop",
    interrupted: "interrupted", recording: "Recording… press the microphone again to send.",
    speak: "Speak", noMicrophone: "This browser cannot record audio.", play: "Listen",
    openWith: "Open the conversation with a greeting:", user: "You", assistant: "Character", system: "System",
    tool: "Tool", model: "Model", builtFrom: "Built from", memoriesUsed: "Memories used", loreUsed: "Lore used",
    none: "none", entry: "entry", tokens: "{prompt} prompt tokens, {reply} reply tokens",
    notATurn: "Not a chat reply: nothing was recalled for it.", noScore: "no score",
    unreadable: "(can no longer be read)", revisedSince: "revised since", forgottenSince: "forgotten since",
    attachLorebook: "Attach a lorebook", attach: "Attach", detach: "Detach",
    noAttached: "No lorebook attached.",
    memoriesBehind: "The memory index was behind: the newest memories may be missing.",
    memoriesUnavailable: "The memory store was down: this reply recalled nothing.",
    source_memory: "memory", source_message: "message", source_memory_text: "memory text",
    searchMemory: "Search the memory", query: "What to look for", nothingFound: "Nothing found.",
    addMemory: "Add a memory", text: "Text", importance: "Importance", speaker: "Who said it", add: "Add",
    memories: "Memories", noMemories: "No memories yet.", change: "Revise or forget", revise: "Revise",
    forget: "Forget", forgetQ: "Forget “{text}”?", forgetMessagesToo: "also the messages that said it",
    formedFrom: "formed from", messageN: "message {n}", copiedFromFork: "copied from the original",
    audit: "Changes to the memory", memoryProcess: "the memory process", key: "key",
    memory_text: "Memory text rewritten", memory_added: "Memory added", memory_revised: "Memory revised",
    memory_forgotten: "Memory forgotten",
    versionSlider: "Version", version: "Version", orAt: "or as it was at", asItWas: "As it was at version {version}",
    characterVoice: "the character's", forkHere: "Fork from here", forkName: "Name of the fork", fork: "Fork",
    events: "Events", newLorebook: "New lorebook", noLorebooks: "No lorebooks yet.", entriesN: "{n} entries",
    newEntry: "New entry", keys: "Keys", keysHint: "Separated by commas; /regex/flags too", content: "Content",
    comment: "Comment", constant: "Always in", enabled: "Enabled", position: "Position", remove: "Remove",
    before_char: "before the character", after_char: "after the character", at_depth: "among the messages",
    err_name_taken: "That name is taken: choose another.",
    err_version_conflict: "Someone changed this meanwhile: reload the page to see the change.",
    err_read_model_behind: "alma is still catching up: try again in a moment.",
  },
  es: {
    title: "alma", welcome: "Abrir alma", apiKey: "Clave de la API", open: "Abrir",
    keyHelp: "Pega la clave de la API que imprimió `alma serve` (o `alma keys create --tenant NOMBRE`). Solo se guarda en esta pestaña.",
    keyRefused: "alma rechazó esta clave: no existe o fue revocada. Pega una clave válida.",
    unreachable: "No se puede contactar con alma en {origin}. ¿Está en marcha `alma serve`? No se ha cambiado nada.",
    serverDown: "alma respondió con un error ({status}). Inténtalo de nuevo en un momento.",
    retry: "Reintentar", forgetKey: "Olvidar la clave", language: "Idioma", sections: "Secciones",
    noSuchPage: "Esa página no existe.", characters: "Personajes", lorebooks: "Lorebooks",
    newCharacter: "Nuevo personaje", more: "Más", search: "Buscar", searchCharacters: "Buscar personajes",
    noCharacters: "Todavía no hay personajes: crea uno o suelta aquí una Character Card.", noMatch: "Ningún personaje coincide.",
    importCard: "Importar una Character Card (PNG, JSON o CHARX)", dropHint: "o suelta el archivo aquí",
    instances: "Instancias", edit: "Editar", exportArchive: "Exportar o archivar", name: "Nombre",
    description: "Descripción", personality: "Personalidad", scenario: "Escenario", greeting: "Saludo",
    example_dialogue: "Diálogo de ejemplo", system_prompt: "Prompt de sistema",
    post_history_instructions: "Instrucciones tras el historial", creator_notes: "Notas del autor",
    creator: "Autor", character_version: "Versión del personaje", nickname: "Apodo",
    alternate_greetings: "Saludos alternativos", greetingsHint: "Uno tras otro, separados por una línea con ---",
    tags: "Etiquetas", tagsHint: "Separadas por comas", voice: "Voz", voiceLanguage: "Idioma (es, en-US…)",
    voiceEngine: "Motor", voiceName: "Voz", voiceSpeed: "Velocidad (0,25–4)", default: "Por defecto",
    save: "Guardar", saved: "Guardado.", create: "Crear", export: "Exportar", format: "Formato", archive: "Archivar",
    archiveCharacterQ: "¿Archivar a {name}? Deja de aparecer en la lista; su historia se conserva.",
    archiveInstanceQ: "¿Archivar {name}? Deja de aparecer y de conversar; su historia se conserva.",
    archiveLorebookQ: "¿Archivar {name}? Deja de usarse en los prompts; su historia se conserva.",
    eraseInstanceQ: "¿Borrar {name} para siempre? Sus memorias y su conversación se destruyen. No se puede deshacer.",
    erase: "Borrar", eraseForGood: "Borrar para siempre", cancel: "Cancelar", manage: "Gestionar", rename: "Renombrar",
    noInstances: "Todavía no hay instancias.", newInstance: "Nueva instancia", memoryText: "Texto de memoria",
    userName: "Tu nombre en el chat", userNameHint: "El {{user}} de la tarjeta; vacío: User",
    forkedFrom: "bifurcada de la versión {version}", views: "Vistas", chat: "Chat", memory: "Memoria", history: "Historia",
    conversation: "Conversación", earlier: "Mensajes anteriores", message: "Mensaje", send: "Enviar", stop: "Detener",
    interrupted: "interrumpida", recording: "Grabando… pulsa otra vez el micrófono para enviar.",
    speak: "Hablar", noMicrophone: "Este navegador no puede grabar audio.", play: "Escuchar",
    openWith: "Abre la conversación con un saludo:", user: "Tú", assistant: "Personaje", system: "Sistema",
    tool: "Herramienta", model: "Modelo", builtFrom: "Construida con", memoriesUsed: "Memorias usadas", loreUsed: "Lore usado",
    none: "ninguno", entry: "entrada", tokens: "{prompt} tokens de prompt, {reply} de respuesta",
    notATurn: "No es una respuesta del chat: no se recordó nada para ella.", noScore: "sin puntuación",
    unreadable: "(ya no se puede leer)", revisedSince: "revisada después", forgottenSince: "olvidada después",
    attachLorebook: "Asociar un lorebook", attach: "Asociar", detach: "Quitar",
    noAttached: "Ningún lorebook asociado.",
    memoriesBehind: "El índice de memoria iba con retraso: pueden faltar las memorias más nuevas.",
    memoriesUnavailable: "El almacén de memoria no respondía: esta respuesta no recordó nada.",
    source_memory: "memoria", source_message: "mensaje", source_memory_text: "texto de memoria",
    searchMemory: "Buscar en la memoria", query: "Qué buscar", nothingFound: "No se encontró nada.",
    addMemory: "Añadir una memoria", text: "Texto", importance: "Importancia", speaker: "Quién lo dijo", add: "Añadir",
    memories: "Memorias", noMemories: "Todavía no hay memorias.", change: "Revisar u olvidar", revise: "Revisar",
    forget: "Olvidar", forgetQ: "¿Olvidar «{text}»?", forgetMessagesToo: "también los mensajes que lo dijeron",
    formedFrom: "formada a partir de", messageN: "mensaje {n}", copiedFromFork: "copiada del original",
    audit: "Cambios en la memoria", memoryProcess: "el proceso de memoria", key: "clave",
    memory_text: "Texto de memoria reescrito", memory_added: "Memoria añadida", memory_revised: "Memoria revisada",
    memory_forgotten: "Memoria olvidada",
    versionSlider: "Versión", version: "Versión", orAt: "o como era en", asItWas: "Como era en la versión {version}",
    characterVoice: "la del personaje", forkHere: "Bifurcar desde aquí", forkName: "Nombre de la bifurcación", fork: "Bifurcar",
    events: "Eventos", newLorebook: "Nuevo lorebook", noLorebooks: "Todavía no hay lorebooks.", entriesN: "{n} entradas",
    newEntry: "Nueva entrada", keys: "Claves", keysHint: "Separadas por comas; también /regex/flags", content: "Contenido",
    comment: "Comentario", constant: "Siempre dentro", enabled: "Activa", position: "Posición", remove: "Quitar",
    before_char: "antes del personaje", after_char: "después del personaje", at_depth: "entre los mensajes",
    err_name_taken: "Ese nombre ya está en uso: elige otro.",
    err_version_conflict: "Alguien lo cambió mientras tanto: recarga la página para ver el cambio.",
    err_read_model_behind: "alma aún se está poniendo al día: inténtalo de nuevo en un momento.",
  },
};

const CHOSEN = "alma.language";

export function language() {
  const chosen = localStorage.getItem(CHOSEN);
  if (chosen in TEXTS) return chosen;
  return (navigator.language || "en").toLowerCase().startsWith("es") ? "es" : "en";
}

export function setLanguage(code) {
  localStorage.setItem(CHOSEN, code);
}

export function has(name) {
  return name in TEXTS.en;
}

export function t(name, values) {
  const text = TEXTS[language()][name] ?? TEXTS.en[name] ?? name;
  return text.replace(/\{(\w+)\}/g, (whole, key) => (values && key in values ? String(values[key]) : whole));
}
