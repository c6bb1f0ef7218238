//! Conversations and messages in SQLite (WAL, synchronous FULL): a message the UI shows as
//! saved has been committed to disk, so a crash or kill loses nothing the user saw saved.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// Per-conversation decoding settings, as the UI edits them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSettings {
    /// "ar" or "jacobi".
    pub mode: String,
    /// "auto" or a number.
    pub block: String,
    pub max_tokens: usize,
    /// Sampling temperature for AR (0 = greedy).
    pub temperature: f64,
    /// Where Jacobi blocks take their guesses from (conversations saved before the setting
    /// existed get the default).
    #[serde(default)]
    pub guesses: fixpoint::Guesses,
    /// The system message the chat template opens with; empty for the template's own default.
    #[serde(default)]
    pub system: String,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            mode: "jacobi".into(),
            block: "auto".into(),
            max_tokens: 512,
            temperature: 0.0,
            guesses: fixpoint::Guesses::default(),
            system: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: i64,
    pub title: String,
    pub settings: ChatSettings,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: i64,
    pub conversation_id: i64,
    /// "user" or "assistant".
    pub role: String,
    pub content: String,
    /// The generation's statistics (assistant messages).
    pub stats: Option<serde_json::Value>,
    /// Every Jacobi iteration of the answer, for replay (assistant messages).
    pub trajectory: Option<serde_json::Value>,
    pub created_at: i64,
}

pub struct Db {
    conn: Connection,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, AppError> {
        make_parent(path)?;
        Ok(Self::init(Connection::open(path)?)?)
    }

    /// [`Db::open`] for the app's start, which must not end in a message on a terminal nobody
    /// sees. A file that is not a readable database is kept under a new name (with its WAL
    /// files) and a new one started; one that cannot be opened at all (permissions, a full
    /// disk) leaves the conversations in memory for this session. Either way the returned
    /// notice says so, for the window to show.
    pub fn open_or_recover(path: &Path) -> Result<(Self, Option<String>), AppError> {
        let error = match make_parent(path) {
            Err(e) => e,
            Ok(()) => match Connection::open(path).and_then(Self::init) {
                Ok(db) => return Ok((db, None)),
                Err(e) if unreadable(&e) => {
                    let kept = path.with_extension(format!("sqlite.unreadable-{}", now()));
                    if move_aside(path, &kept).is_ok() {
                        if let Ok(db) = Self::open(path) {
                            let notice = format!(
                                "{} could not be read ({e}); it was kept as {} and a new one started",
                                path.display(),
                                kept.display()
                            );
                            return Ok((db, Some(notice)));
                        }
                    }
                    e.into()
                }
                Err(e) => e.into(),
            },
        };
        let notice = format!(
            "cannot open {} ({error}): conversations in this session will not be saved",
            path.display()
        );
        Ok((Self::in_memory()?, Some(notice)))
    }

    pub fn in_memory() -> Result<Self, AppError> {
        Ok(Self::init(Connection::open_in_memory()?)?)
    }

    fn init(conn: Connection) -> rusqlite::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS conversations (
                 id INTEGER PRIMARY KEY,
                 title TEXT NOT NULL,
                 settings TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS messages (
                 id INTEGER PRIMARY KEY,
                 conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                 role TEXT NOT NULL,
                 content TEXT NOT NULL,
                 stats TEXT,
                 trajectory TEXT,
                 created_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS messages_by_conversation
                 ON messages(conversation_id, id);",
        )?;
        Ok(Self { conn })
    }

    pub fn create_conversation(
        &self,
        title: &str,
        settings: &ChatSettings,
    ) -> Result<Conversation, AppError> {
        let t = now();
        self.conn.execute(
            "INSERT INTO conversations (title, settings, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            params![title, serde_json::to_string(settings)?, t],
        )?;
        self.conversation(self.conn.last_insert_rowid())
    }

    pub fn conversation(&self, id: i64) -> Result<Conversation, AppError> {
        self.conn
            .query_row(
                "SELECT id, title, settings, created_at, updated_at FROM conversations WHERE id = ?1",
                [id],
                row_to_conversation,
            )
            .optional()?
            .ok_or(AppError::NoSuchConversation(id))
    }

    /// Newest first; `query` matches titles and message text.
    pub fn list_conversations(&self, query: &str) -> Result<Vec<Conversation>, AppError> {
        let pattern = format!("%{}%", query.replace('%', "\\%").replace('_', "\\_"));
        let mut stmt = self.conn.prepare(
            "SELECT id, title, settings, created_at, updated_at FROM conversations c
             WHERE ?1 = '%%' OR title LIKE ?1 ESCAPE '\\'
                OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                           AND m.content LIKE ?1 ESCAPE '\\')
             ORDER BY updated_at DESC, id DESC",
        )?;
        let rows = stmt.query_map([pattern], row_to_conversation)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn rename_conversation(&self, id: i64, title: &str) -> Result<Conversation, AppError> {
        let title = title.trim();
        if title.is_empty() {
            return Err(AppError::Invalid("a conversation needs a title".into()));
        }
        self.touch(id, "title", title)?;
        self.conversation(id)
    }

    pub fn update_settings(
        &self,
        id: i64,
        settings: &ChatSettings,
    ) -> Result<Conversation, AppError> {
        self.touch(id, "settings", &serde_json::to_string(settings)?)?;
        self.conversation(id)
    }

    fn touch(&self, id: i64, column: &str, value: &str) -> Result<(), AppError> {
        let sql = format!("UPDATE conversations SET {column} = ?1, updated_at = ?2 WHERE id = ?3");
        if self.conn.execute(&sql, params![value, now(), id])? == 0 {
            return Err(AppError::NoSuchConversation(id));
        }
        Ok(())
    }

    pub fn delete_conversation(&self, id: i64) -> Result<(), AppError> {
        if self
            .conn
            .execute("DELETE FROM conversations WHERE id = ?1", [id])?
            == 0
        {
            return Err(AppError::NoSuchConversation(id));
        }
        Ok(())
    }

    pub fn add_message(
        &self,
        conversation_id: i64,
        role: &str,
        content: &str,
        stats: Option<&serde_json::Value>,
        trajectory: Option<&serde_json::Value>,
    ) -> Result<StoredMessage, AppError> {
        let t = now();
        let tx = self.conn.unchecked_transaction()?;
        touch_updated(&tx, conversation_id, t)?;
        tx.execute(
            "INSERT INTO messages (conversation_id, role, content, stats, trajectory, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                conversation_id,
                role,
                content,
                stats.map(|s| s.to_string()),
                trajectory.map(|s| s.to_string()),
                t
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(StoredMessage {
            id,
            conversation_id,
            role: role.into(),
            content: content.into(),
            stats: stats.cloned(),
            trajectory: trajectory.cloned(),
            created_at: t,
        })
    }

    pub fn messages(&self, conversation_id: i64) -> Result<Vec<StoredMessage>, AppError> {
        self.conversation(conversation_id)?;
        let mut stmt = self.conn.prepare(
            "SELECT id, conversation_id, role, content, stats, trajectory, created_at
             FROM messages WHERE conversation_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([conversation_id], row_to_message)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Message `id` of the conversation, if it has one by that id.
    fn message(&self, conversation_id: i64, id: i64) -> Result<Option<StoredMessage>, AppError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, conversation_id, role, content, stats, trajectory, created_at
                 FROM messages WHERE id = ?1 AND conversation_id = ?2",
                params![id, conversation_id],
                row_to_message,
            )
            .optional()?)
    }

    /// Gives user message `message_id` of the conversation the text `content` and deletes the
    /// messages after it (the answers an edited question replaces), in one transaction; returns
    /// the message as it was.
    pub fn edit_user_message(
        &self,
        conversation_id: i64,
        message_id: i64,
        content: &str,
    ) -> Result<StoredMessage, AppError> {
        self.conversation(conversation_id)?;
        let old = self
            .message(conversation_id, message_id)?
            .filter(|m| m.role == "user")
            .ok_or_else(|| {
                AppError::Invalid(format!(
                    "message {message_id} is not a question of conversation {conversation_id}"
                ))
            })?;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM messages WHERE conversation_id = ?1 AND id > ?2",
            params![conversation_id, message_id],
        )?;
        tx.execute(
            "UPDATE messages SET content = ?1 WHERE id = ?2",
            params![content, message_id],
        )?;
        touch_updated(&tx, conversation_id, now())?;
        tx.commit()?;
        Ok(old)
    }

    /// Gives message `id` of the conversation new content, statistics and trajectory (a
    /// regenerated or continued answer, which keeps its place); returns it as saved.
    pub fn replace_message(
        &self,
        conversation_id: i64,
        id: i64,
        content: &str,
        stats: Option<&serde_json::Value>,
        trajectory: Option<&serde_json::Value>,
    ) -> Result<StoredMessage, AppError> {
        let missing = || AppError::Invalid(format!("message {id} does not exist"));
        let tx = self.conn.unchecked_transaction()?;
        let changed = tx.execute(
            "UPDATE messages SET content = ?1, stats = ?2, trajectory = ?3
             WHERE id = ?4 AND conversation_id = ?5",
            params![
                content,
                stats.map(|s| s.to_string()),
                trajectory.map(|s| s.to_string()),
                id,
                conversation_id
            ],
        )?;
        if changed == 0 {
            return Err(missing());
        }
        touch_updated(&tx, conversation_id, now())?;
        tx.commit()?;
        self.message(conversation_id, id)?.ok_or_else(missing)
    }
}

/// Marks the conversation changed at `t`, as part of a message's write.
fn touch_updated(conn: &Connection, conversation_id: i64, t: i64) -> Result<(), AppError> {
    let sql = "UPDATE conversations SET updated_at = ?1 WHERE id = ?2";
    if conn.execute(sql, params![t, conversation_id])? == 0 {
        return Err(AppError::NoSuchConversation(conversation_id));
    }
    Ok(())
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(StoredMessage {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        role: r.get(2)?,
        content: r.get(3)?,
        stats: json(r.get(4)?),
        trajectory: json(r.get(5)?),
        created_at: r.get(6)?,
    })
}

fn make_parent(path: &Path) -> Result<(), AppError> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir)
            .map_err(|e| AppError::Storage(format!("{}: {e}", dir.display()))),
        None => Ok(()),
    }
}

/// Whether opening failed because the file holds something other than a sound database.
fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        )
    )
}

/// Renames the database at `path` to `kept`, with its WAL files.
fn move_aside(path: &Path, kept: &Path) -> std::io::Result<()> {
    std::fs::rename(path, kept)?;
    for suffix in ["-wal", "-shm"] {
        let side = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(suffix);
            std::path::PathBuf::from(s)
        };
        if side(path).exists() {
            std::fs::rename(side(path), side(kept))?;
        }
    }
    Ok(())
}

fn row_to_conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    let settings: String = r.get(2)?;
    Ok(Conversation {
        id: r.get(0)?,
        title: r.get(1)?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

/// The conversation as Markdown: a heading, then each message under its role.
pub fn to_markdown(c: &Conversation, messages: &[StoredMessage]) -> String {
    let mut out = format!("# {}\n\n", c.title);
    if !c.settings.system.trim().is_empty() {
        out.push_str(&format!(
            "## System\n\n{}\n\n",
            c.settings.system.trim_end()
        ));
    }
    for m in messages {
        let who = if m.role == "user" { "You" } else { "Assistant" };
        out.push_str(&format!("## {who}\n\n{}\n\n", m.content.trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_round_trip_search_and_cascade() {
        let db = Db::in_memory().unwrap();
        let a = db
            .create_conversation("Apples", &ChatSettings::default())
            .unwrap();
        let b = db
            .create_conversation("Pears", &ChatSettings::default())
            .unwrap();
        db.add_message(a.id, "user", "how many apples?", None, None)
            .unwrap();
        db.add_message(b.id, "user", "100% pears_x", None, None)
            .unwrap();
        let found: Vec<i64> = db
            .list_conversations("apples")
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(found, vec![a.id]);
        assert_eq!(db.list_conversations("100%").unwrap().len(), 1);
        assert_eq!(db.list_conversations("").unwrap().len(), 2);
        db.rename_conversation(a.id, "Fruit").unwrap();
        assert_eq!(db.conversation(a.id).unwrap().title, "Fruit");
        assert!(db.rename_conversation(a.id, "  ").is_err());
        db.add_message(
            a.id,
            "assistant",
            "three",
            Some(&serde_json::json!({"x": 1})),
            None,
        )
        .unwrap();
        db.delete_conversation(a.id).unwrap();
        assert!(matches!(
            db.messages(a.id),
            Err(AppError::NoSuchConversation(_))
        ));
        let md = to_markdown(&b, &db.messages(b.id).unwrap());
        assert!(md.starts_with("# Pears") && md.contains("100% pears_x"));
        assert!(!md.contains("## System"));

        // An edited question keeps its place and loses what came after it; only questions of
        // the conversation can be edited.
        let ids: Vec<i64> = ["first?", "one", "second?", "two"]
            .iter()
            .zip(["user", "assistant"].iter().cycle())
            .map(|(text, role)| db.add_message(b.id, role, text, None, None).unwrap().id)
            .collect();
        assert!(db.edit_user_message(b.id, ids[1], "an answer").is_err());
        assert_eq!(
            db.messages(b.id).unwrap().len(),
            5,
            "a refused edit changes nothing"
        );
        let old = db
            .edit_user_message(b.id, ids[0], "First, edited?")
            .unwrap();
        assert_eq!(old.content, "first?");
        let left: Vec<(i64, String)> = db
            .messages(b.id)
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.content))
            .collect();
        assert_eq!(
            left.last().unwrap(),
            &(ids[0], "First, edited?".to_string())
        );
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(db.edit_user_message(b.id, 999, "x").is_err());
        assert!(db.edit_user_message(999, ids[0], "x").is_err());
        let b = db
            .update_settings(
                b.id,
                &ChatSettings {
                    system: "Answer in rhymes.".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let md = to_markdown(&b, &db.messages(b.id).unwrap());
        assert!(md.starts_with("# Pears\n\n## System\n\nAnswer in rhymes.\n\n## You"));
    }

    #[test]
    fn settings_saved_before_newer_settings_keep_their_values() {
        let old = r#"{"mode":"jacobi","block":"8","max_tokens":99,"temperature":0.0}"#;
        let s: ChatSettings = serde_json::from_str(old).unwrap();
        assert_eq!((s.block.as_str(), s.max_tokens), ("8", 99));
        assert_eq!(s.guesses, fixpoint::Guesses::Context);
        assert_eq!(s.system, "");
        let plain = ChatSettings {
            guesses: fixpoint::Guesses::Jacobi,
            system: "Be brief.".into(),
            ..s
        };
        let back: ChatSettings =
            serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn an_unreadable_file_is_kept_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite");
        std::fs::write(&path, b"not a database, but somebody's bytes").unwrap();
        let (db, notice) = Db::open_or_recover(&path).unwrap();
        let notice = notice.expect("a notice for the window");
        assert!(notice.contains("could not be read"), "{notice}");
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("unreadable"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(notice.contains(&*kept[0].to_string_lossy()), "{notice}");
        assert_eq!(
            std::fs::read(&kept[0]).unwrap(),
            b"not a database, but somebody's bytes"
        );
        // The new file works and is the one opened next time, without a notice.
        let c = db
            .create_conversation("fresh", &ChatSettings::default())
            .unwrap();
        drop(db);
        let (db, notice) = Db::open_or_recover(&path).unwrap();
        assert_eq!(notice, None);
        assert_eq!(db.conversation(c.id).unwrap().title, "fresh");
    }

    #[test]
    fn a_file_that_cannot_be_opened_leaves_the_conversations_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: nothing to read, nothing to move.
        let path = dir.path().join("chats.sqlite");
        std::fs::create_dir(&path).unwrap();
        let (db, notice) = Db::open_or_recover(&path).unwrap();
        assert!(notice.unwrap().contains("will not be saved"));
        db.create_conversation("kept for now", &ChatSettings::default())
            .unwrap();
        assert!(path.is_dir(), "left as it was");
    }

    #[test]
    fn committed_messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite");
        let id = {
            let db = Db::open(&path).unwrap();
            let c = db
                .create_conversation("kept", &ChatSettings::default())
                .unwrap();
            db.add_message(c.id, "user", "hello", None, None).unwrap();
            c.id
            // dropped without any explicit close or checkpoint
        };
        let db = Db::open(&path).unwrap();
        assert_eq!(db.messages(id).unwrap()[0].content, "hello");
    }
}
